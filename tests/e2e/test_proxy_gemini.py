"""Gemini's REST API with a raw HTTP client, over HTTP/2 to the proxy.

mitmproxy mirrors the upstream's ALPN when it connects upstream first; the fake provider
(aiohttp) has no HTTP/2, so this module's proxy connects lazily and speaks HTTP/2 to the
client and HTTP/1.1 to the upstream, as it would to a real provider without h2.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import KEYS, new_proxy
from tests.support.clients import Clients
from tests.support.proxy import MeterProxy, row_usage
from tests.support.upstream import FakeProvider


@pytest.fixture(scope="module")
def h2_proxy(
    tmp_path_factory: pytest.TempPathFactory, mitm_confdir: Path, test_catalog: Path
) -> Iterator[MeterProxy]:
    proxy = new_proxy(
        tmp_path_factory.mktemp("h2-proxy"),
        mitm_confdir,
        test_catalog,
        options={"connection_strategy": "lazy"},
    ).start()
    yield proxy
    proxy.stop()


BODY = {"contents": [{"role": "user", "parts": [{"text": "Explain tokens briefly."}]}]}


def _url(upstream: FakeProvider, method: str, query: str = "") -> str:
    base = upstream.base_url("gemini", tls=True)
    return f"{base}/v1beta/models/gemini-2.5-flash:{method}{query}"


def test_generate_content_http2(
    clients: Clients, h2_proxy: MeterProxy, fake_provider: FakeProvider
) -> None:
    with (
        clients.for_proxy(h2_proxy)
        .raw(http2=True)
        .stream(
            "POST",
            _url(fake_provider, "generateContent"),
            json=BODY,
            headers={"x-goog-api-key": KEYS["alice"]},
        ) as resp
    ):
        received = b"".join(resp.iter_raw())
        assert resp.http_version == "HTTP/2"
    ex = fake_provider.last()
    assert received == bytes(ex.sent)
    [row] = h2_proxy.wait_for_events([ex.request_id])
    assert ex.usage is not None and row_usage(row) == ex.usage
    assert row["response_id"] == ex.response_id
    assert (row["consumer"], row["model"], row["streamed"]) == ("alice", "gemini-2.5-flash", False)


@pytest.mark.parametrize("alt_sse", [False, True], ids=["json-array", "alt-sse"])
def test_stream_generate_content(
    clients: Clients, h2_proxy: MeterProxy, fake_provider: FakeProvider, alt_sse: bool
) -> None:
    # The key in ?key= must reach the provider, and must not be stored.
    query = f"?alt=sse&key={KEYS['alice']}" if alt_sse else f"?key={KEYS['alice']}"
    with (
        clients.for_proxy(h2_proxy)
        .raw(http2=True)
        .stream("POST", _url(fake_provider, "streamGenerateContent", query), json=BODY) as resp
    ):
        received = b"".join(resp.iter_raw())
        assert resp.http_version == "HTTP/2"
    ex = fake_provider.last()
    assert received == bytes(ex.sent)
    if not alt_sse:
        assert len(json.loads(received)) == len(ex.parts) - 1
    [row] = h2_proxy.wait_for_events([ex.request_id])
    assert ex.usage is not None and row_usage(row) == ex.usage
    assert row["consumer"] == "alice" and row["streamed"]
    assert row["path"] == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"


#: An image answer bigger than the proxy reads whole (bounded.MAX_METERED_BODY, 16 MiB).
BIG_IMAGE = 17 * 1024 * 1024


@pytest.mark.parametrize(
    "method,query",
    [
        ("generateContent", ""),
        ("streamGenerateContent", ""),
        ("streamGenerateContent", "?alt=sse"),
    ],
    ids=["json", "json-array", "alt-sse"],
)
def test_a_17_mb_image_answer_is_metered_from_the_usage_after_it(
    clients: Clients, meter_proxy: MeterProxy, fake_provider: FakeProvider, method: str, query: str
) -> None:
    """The usage follows the image: it was estimated (8 input, 0 output against 20 and
    4,490 reported: ~$0.54 of image tokens lost per call at Gemini 3 Pro Image's price)."""
    headers = {"x-goog-api-key": KEYS["alice"], "x-fake": f"pad={BIG_IMAGE}"}
    base = fake_provider.base_url("gemini")
    url = f"{base}/v1beta/models/gemini-2.5-flash:{method}{query}"
    with clients.raw().stream("POST", url, json=BODY, headers=headers) as resp:
        size = sum(len(c) for c in resp.iter_raw())
    ex = fake_provider.last()
    assert size == len(ex.sent) > BIG_IMAGE
    [row] = meter_proxy.wait_for_events([ex.request_id], timeout=30)
    assert ex.usage is not None and row_usage(row) == ex.usage
    assert not row["estimated"] and row["model"] == "gemini-2.5-flash"
