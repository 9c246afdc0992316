"""Clients that talk to the fake provider through the proxy, as real agents would.

HTTPS (``tls=True``): the client CONNECTs through the proxy and trusts the mitmproxy CA;
the proxy reaches the fake provider's TLS port (self-signed: the proxy runs with
``ssl_insecure=true``). Plain HTTP (``tls=False``): absolute-form requests to the proxy.
"""

from __future__ import annotations

import ssl
from typing import Any

import anthropic
import httpx2
import openai

from tests.support.proxy import MeterProxy
from tests.support.upstream import FakeProvider


def ca_context(proxy: MeterProxy) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(proxy.ca_cert))


def openai_client(
    proxy: MeterProxy, upstream: FakeProvider, api_key: str, *, tls: bool = True
) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=upstream.base_url("openai", tls=tls) + "/v1",
        api_key=api_key,
        max_retries=0,
        http_client=openai.DefaultHttpxClient(proxy=proxy.url, verify=ca_context(proxy)),
    )


def async_openai_client(
    proxy: MeterProxy, upstream: FakeProvider, api_key: str, *, timeout: float = 60
) -> openai.AsyncOpenAI:
    """An official async OpenAI client through ``proxy`` over TLS, no retries (bursts)."""
    return openai.AsyncOpenAI(
        api_key=api_key,
        base_url=upstream.base_url("openai", tls=True) + "/v1",
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(
            proxy=proxy.url, verify=ca_context(proxy), timeout=timeout
        ),
    )


def anthropic_client(
    proxy: MeterProxy, upstream: FakeProvider, api_key: str, *, tls: bool = True
) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=upstream.base_url("anthropic", tls=tls),
        api_key=api_key,
        max_retries=0,
        http_client=anthropic.DefaultHttpxClient(proxy=proxy.url, verify=ca_context(proxy)),
    )


def post_via(
    proxy: MeterProxy, url: str, body: Any, key: str, headers: dict[str, str] | None = None
) -> httpx2.Response:
    """One plain-HTTP POST of ``body`` to ``url`` through ``proxy``, ``key`` as a Bearer."""
    with httpx2.Client(proxy=proxy.url, timeout=30) as client:
        return client.post(
            url, json=body, headers={"authorization": f"Bearer {key}", **(headers or {})}
        )


def raw_client(proxy: MeterProxy, *, http2: bool = False) -> httpx2.Client:
    """A plain HTTP client through the proxy (``http2=True``: HTTP/2 to the proxy over TLS)."""
    return httpx2.Client(proxy=proxy.url, verify=ca_context(proxy), http2=http2, timeout=10)


class Clients:
    """Makes clients for one proxy and fake provider, and closes them all (:meth:`close`).

    An unclosed client leaks sockets, and pytest here turns ResourceWarnings into errors.
    """

    def __init__(self, proxy: MeterProxy, upstream: FakeProvider) -> None:
        self.proxy = proxy
        self.upstream = upstream
        self._open: list[openai.OpenAI | anthropic.Anthropic | httpx2.Client] = []

    def for_proxy(self, proxy: MeterProxy) -> Clients:
        other = Clients(proxy, self.upstream)
        other._open = self._open  # closed together
        return other

    def openai(self, api_key: str, *, tls: bool = True) -> openai.OpenAI:
        client = openai_client(self.proxy, self.upstream, api_key, tls=tls)
        self._open.append(client)
        return client

    def anthropic(self, api_key: str, *, tls: bool = True) -> anthropic.Anthropic:
        client = anthropic_client(self.proxy, self.upstream, api_key, tls=tls)
        self._open.append(client)
        return client

    def raw(self, *, http2: bool = False) -> httpx2.Client:
        client = raw_client(self.proxy, http2=http2)
        self._open.append(client)
        return client

    def close(self) -> None:
        for client in self._open:
            client.close()
        self._open.clear()
