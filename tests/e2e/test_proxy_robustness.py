"""Compressed bodies, cut streams, garbage, errors and non-LLM traffic through the proxy."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.conftest import KEYS, ProxyFactory
from tests.support.clients import Clients, ca_context, post_via
from tests.support.proxy import MeterProxy, one_provider_catalog, row_usage
from tests.support.upstream import FakeProvider, encode_body

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello there"}]}
MESSAGES = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 50,
    "messages": [{"role": "user", "content": "hello there"}],
}
GEMINI = {"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}


def _request(
    upstream: FakeProvider, flavor: str, *, stream: bool, behaviour: str = ""
) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(url, json body, headers) for one API call of ``flavor``."""
    headers = {"x-fake": behaviour} if behaviour else {}
    base = upstream.base_url(flavor, tls=True)
    if flavor == "openai":
        body: dict[str, Any] = dict(CHAT)
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        return (
            base + "/v1/chat/completions",
            body,
            headers | {"authorization": f"Bearer {KEYS['alice']}"},
        )
    if flavor == "anthropic":
        body = dict(MESSAGES) | ({"stream": True} if stream else {})
        return (
            base + "/v1/messages",
            body,
            headers
            | {
                "x-api-key": KEYS["bob"],
                "anthropic-version": "2023-06-01",
            },
        )
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return (
        f"{base}/v1beta/models/gemini-2.5-pro:{method}",
        GEMINI,
        headers | {"x-goog-api-key": KEYS["alice"]},
    )


def _send(client: httpx2.Client, url: str, body: Any, headers: dict[str, str]) -> bytes:
    """The raw (still content-encoded) bytes the client received; a cut ends the read."""
    received = bytearray()
    with client.stream("POST", url, json=body, headers=headers) as resp:
        try:
            for chunk in resp.iter_raw():
                received += chunk
        except httpx2.RemoteProtocolError:
            pass
    return bytes(received)


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd", "deflate"])
@pytest.mark.parametrize(
    "flavor,stream", [("openai", True), ("anthropic", False), ("gemini", True)]
)
def test_compressed_bodies(
    clients: Clients,
    meter_proxy: MeterProxy,
    fake_provider: FakeProvider,
    encoding: str,
    flavor: str,
    stream: bool,
) -> None:
    url, body, headers = _request(fake_provider, flavor, stream=stream, behaviour=encoding)
    received = _send(clients.raw(), url, body, headers)
    ex = fake_provider.last()
    assert ex.response_headers["content-encoding"] == encoding
    assert received == bytes(ex.sent)
    if not stream:
        assert received == encode_body(encoding, bytes(ex.plain))
    [row] = meter_proxy.wait_for_events([ex.request_id])
    assert ex.usage is not None and row_usage(row) == ex.usage
    assert not row["estimated"]


@pytest.mark.parametrize(
    "flavor,stream", [("openai", True), ("anthropic", True), ("gemini", True), ("openai", False)]
)
def test_cut_stream_is_estimated(
    clients: Clients,
    meter_proxy: MeterProxy,
    fake_provider: FakeProvider,
    flavor: str,
    stream: bool,
) -> None:
    mark = meter_proxy.log_mark()
    url, body, headers = _request(fake_provider, flavor, stream=stream, behaviour="cut")
    received = _send(clients.raw(), url, body, headers)
    ex = fake_provider.last()
    assert not ex.complete
    assert received == bytes(ex.sent)  # everything sent before the cut arrived
    [row] = meter_proxy.wait_for_events([ex.request_id], timeout=15)
    assert row["estimated"]
    assert row["status"] is None  # no complete response
    assert row["input_tokens"] > 0
    if stream:
        assert row["output_tokens"] > 0  # counted from the text that did arrive
    meter_proxy.wait_for_log(f"response from fake-{flavor} .* cut short", since=mark)
    # The proxy survived: the next call is metered normally.
    url, body, headers = _request(fake_provider, flavor, stream=stream)
    _send(clients.raw(), url, body, headers)
    ok = fake_provider.last()
    [row] = meter_proxy.wait_for_events([ok.request_id])
    assert ok.usage is not None and row_usage(row) == ok.usage


@pytest.mark.parametrize(
    "flavor,stream",
    [("openai", False), ("openai", True), ("anthropic", True), ("gemini", False), ("gemini", True)],
)
def test_malformed_body_passes_through_and_is_logged(
    clients: Clients,
    meter_proxy: MeterProxy,
    fake_provider: FakeProvider,
    flavor: str,
    stream: bool,
) -> None:
    mark = meter_proxy.log_mark()
    url, body, headers = _request(fake_provider, flavor, stream=stream, behaviour="malformed")
    received = _send(clients.raw(), url, body, headers)
    ex = fake_provider.last()
    assert received == bytes(ex.sent)
    [row] = meter_proxy.wait_for_events([ex.request_id])
    assert row["status"] == 200
    meter_proxy.wait_for_log(r"unreadable response from fake-" + flavor, since=mark)
    log = meter_proxy.log_text()
    assert "garbage" not in log and "not json" not in log  # no payload in the log
    assert KEYS["alice"] not in log and KEYS["bob"] not in log
    # Still alive and metering.
    url, body, headers = _request(fake_provider, flavor, stream=stream)
    _send(clients.raw(), url, body, headers)
    ok = fake_provider.last()
    [row] = meter_proxy.wait_for_events([ok.request_id])
    assert ok.usage is not None and row_usage(row) == ok.usage


@pytest.mark.parametrize("flavor", ["openai", "anthropic", "gemini"])
def test_error_status_bills_nothing(
    clients: Clients, meter_proxy: MeterProxy, fake_provider: FakeProvider, flavor: str
) -> None:
    url, body, headers = _request(fake_provider, flavor, stream=True, behaviour="status=429")
    received = _send(clients.raw(), url, body, headers)
    ex = fake_provider.last()
    assert received == bytes(ex.sent)
    assert "error" in json.loads(received)
    [row] = meter_proxy.wait_for_events([ex.request_id])
    assert row["status"] == 429
    assert row_usage(row) == dict.fromkeys(row_usage(row), 0)
    assert not row["estimated"]


def test_non_llm_traffic_is_not_metered(
    clients: Clients, meter_proxy: MeterProxy, fake_provider: FakeProvider
) -> None:
    client = clients.raw()
    assert client.get(fake_provider.base_url("openai", tls=True) + "/plain").text == "ok"
    # A provider host, but a path that does not bill.
    resp = client.get(
        fake_provider.base_url("openai") + "/v1/models",
        headers={"authorization": f"Bearer {KEYS['alice']}"},
    )
    assert resp.status_code == 404
    url, body, headers = _request(fake_provider, "openai", stream=False)
    _send(client, url, body, headers)
    [row] = meter_proxy.wait_for_events([fake_provider.last().request_id])
    # Events are written in order: anything from the first two requests would be there now.
    assert meter_proxy.events("path IN ('/plain', '/v1/models')") == []


@pytest.mark.parametrize("flavor", ["openai", "anthropic", "gemini"])
def test_stream_is_passed_through_as_it_comes(
    clients: Clients, meter_proxy: MeterProxy, fake_provider: FakeProvider, flavor: str
) -> None:
    """Each SSE event reaches the client when the provider sends it, not at the end."""
    url, body, headers = _request(fake_provider, flavor, stream=True, behaviour="delay=0.06")
    arrivals: list[float] = []
    t0 = time.monotonic()
    with clients.raw().stream("POST", url, json=body, headers=headers) as resp:
        for _ in resp.iter_raw():
            arrivals.append(time.monotonic() - t0)
    ex = fake_provider.last()
    gaps = 0.06 * (len(ex.parts) - 1)
    assert arrivals[-1] >= gaps
    assert arrivals[0] < arrivals[-1] - gaps / 2  # the first event did not wait for the rest
    assert len(arrivals) >= len(ex.parts) // 2
    [row] = meter_proxy.wait_for_events([ex.request_id])
    assert ex.usage is not None and row_usage(row) == ex.usage
    assert row["latency_ms"] - row["ttft_ms"] >= gaps * 1000 * 0.8


#: Each flavor's own spelling of a call's output bound.
_BOUND = {
    "openai": {"max_completion_tokens": 777},
    "anthropic": {"max_tokens": 777},
    "gemini": {"generationConfig": {"maxOutputTokens": 777}},
}


@pytest.mark.parametrize(
    "flavor,http2,option",
    [
        ("openai", False, "bound"),
        ("anthropic", False, "bound"),
        ("gemini", False, "bound"),
        ("openai", True, "bound"),
        ("anthropic", False, "none"),
    ],
)
def test_a_client_that_gives_up_before_the_answer_is_still_metered(
    start_proxy: ProxyFactory, fake_provider: FakeProvider, flavor: str, http2: bool, option: str
) -> None:
    """An agent's timeout while the provider generates a JSON answer (no byte of it sent
    yet): the provider finishes and bills the call all the same, so it is metered as cut,
    its input estimated and its output at the call's bound, 777 (the most the answer can
    be, and what the limits held for it); ``meter_abandoned_output=none`` meters 0 output.
    Before: nothing metered (10 of 10 in a probe); until 3 December, output 0 whatever
    the option: a client that always timed out spent past any hard cap (30 calls of 100
    tokens admitted at a limit of 1,000, none counted)."""
    proxy = start_proxy(options={"meter_abandoned_output": option})
    url, body, headers = _request(fake_provider, flavor, stream=False, behaviour="think=1.5")
    body = body | _BOUND[flavor]
    with (
        httpx2.Client(proxy=proxy.url, verify=ca_context(proxy), http2=http2, timeout=0.5) as c,
        pytest.raises(httpx2.TimeoutException),
    ):
        c.post(url, json=body, headers=headers)
    deadline = time.monotonic() + 15
    while not (rows := proxy.events()) and time.monotonic() < deadline:
        time.sleep(0.1)
    [row] = rows
    assert row["consumer"] == ("bob" if flavor == "anthropic" else "alice")
    assert row["estimated"] and row["status"] is None
    assert row["input_tokens"] > 0
    assert row["output_tokens"] == (777 if option == "bound" else 0)
    assert fake_provider.last().flavor == flavor  # the provider did get the whole request


def test_a_provider_that_cannot_be_reached_bills_nothing(
    start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    """The control: no connection to the provider, so no work and no event."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    catalog = one_provider_catalog(
        tmp_path / "catalog.yaml", "gone", closed_port, {"alice": [KEYS["alice"]]}
    )
    proxy = start_proxy(catalog=catalog)
    r = post_via(proxy, f"http://127.0.0.1:{closed_port}/v1/chat/completions", CHAT, KEYS["alice"])
    assert r.status_code == 502
    proxy.wait_for_log("no response from gone .*, nothing metered")
    assert proxy.stop() == 0
    assert proxy.events() == []
