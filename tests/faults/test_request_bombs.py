"""Content-encoded request bodies through a real mitmdump: a compression bomb is refused
unsent (413, in each provider's error shape, recorded), a large body that compresses as
real content does is read whole and metered as usual."""

from __future__ import annotations

import base64
import gzip
import json
import random
import time
from pathlib import Path
from typing import Any

import httpx2

from addons.metering import bounded
from tests.conftest import KEYS, ProxyFactory
from tests.support.governance import governed_catalog
from tests.support.proxy import MeterProxy, row_usage
from tests.support.upstream import FakeProvider

MiB = 1024 * 1024
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
CLAUDE = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": CHAT["messages"]}
GEMINI = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def bomb(body: dict[str, Any]) -> bytes:
    """``body`` padded with 17 MiB of JSON whitespace, gzip'd: ~17 KB on the wire, past
    the decode budget (16 MiB + 16 x the compressed bytes)."""
    raw = json.dumps(body).encode()
    return gzip.compress(raw[:-1] + b" " * (17 * MiB) + b"}", mtime=0)


def refused_rows(proxy: MeterProxy, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The events of refused calls, once there are ``count`` (fails past ``timeout``)."""
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = proxy.events("reason IS NOT NULL")
        if len(rows) >= count:
            break
        time.sleep(0.05)
    assert len(rows) == count, f"{len(rows)} refused events, expected {count}:\n{proxy.log()}"
    return rows


def test_a_request_body_that_decodes_past_its_budget_is_refused_unsent(
    fake_provider: FakeProvider, start_proxy: ProxyFactory
) -> None:
    """A 17 MiB gzip'd whitespace bomb read as empty: no model, no limit matched, and it
    was forwarded and metered as 0 input tokens. Now: 413 in the provider's own error
    shape, never sent upstream, recorded with zero tokens and ``reason``."""
    proxy = start_proxy()
    key = KEYS["alice"]
    calls = [
        ("openai", "/v1/chat/completions", CHAT, {"authorization": f"Bearer {key}"}),
        (
            "anthropic",
            "/v1/messages",
            CLAUDE,
            {"x-api-key": key, "anthropic-version": "2023-06-01"},
        ),
        (
            "gemini",
            "/v1beta/models/gemini-2.5-pro:generateContent",
            GEMINI,
            {"x-goog-api-key": key},
        ),
    ]
    fake_provider.reset()
    errors: dict[str, Any] = {}
    with httpx2.Client(proxy=proxy.url, timeout=60) as client:
        for flavor, path, body, headers in calls:
            wire = bomb(body)
            r = client.post(
                fake_provider.base_url(flavor) + path,
                content=wire,
                headers={
                    **headers,
                    "content-type": "application/json",
                    "content-encoding": "gzip",
                },
            )
            assert r.status_code == 413, r.text
            assert r.headers["x-meterline"] == "body_too_large"
            assert r.headers["x-should-retry"] == "false"
            errors[flavor] = r.json()
    assert fake_provider.exchanges == []  # none went upstream
    budget = bounded.decode_budget(False, len(bomb(CHAT)))
    message = f"Request body decodes to more than {budget} bytes: Meterline cannot meter it."
    assert errors["openai"] == {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "code": "request_too_large",
        }
    }
    assert errors["anthropic"]["error"]["type"] == "request_too_large"
    assert errors["gemini"]["error"]["status"] == "INVALID_ARGUMENT"
    rows = refused_rows(proxy, 3)
    assert sorted(r["provider"] for r in rows) == ["fake-anthropic", "fake-gemini", "fake-openai"]
    for row in rows:
        assert (row["reason"], row["status"], row["consumer"]) == ("body_too_large", 413, "alice")
        assert set(row_usage(row).values()) == {0}


def test_a_bomb_is_refused_past_a_reached_hard_limit_too(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory
) -> None:
    """A consumer at its hard cap: the bomb (no model readable) matched no limit and was
    answered 200 while the same plain call is refused 429."""
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        {"alice": KEYS["alice"]},
        entitlements=[{"feature": "gpt-out", "limit": 5}],
    )
    proxy = start_proxy(catalog=catalog)
    url = fake_provider.base_url("openai") + "/v1/chat/completions"
    headers = {"authorization": f"Bearer {KEYS['alice']}", "content-type": "application/json"}
    fake_provider.reset()
    with httpx2.Client(proxy=proxy.url, timeout=60) as client:
        first = client.post(url, json=CHAT, headers={**headers, "x-fake": "output=10"})
        assert first.status_code == 200  # crosses the limit: the last call admitted
        [served] = fake_provider.wait_for(1)
        proxy.wait_for_events([served.request_id])
        gzipped = client.post(
            url, content=bomb(CHAT), headers={**headers, "content-encoding": "gzip"}
        )
        plain = client.post(url, json=CHAT, headers=headers)
        # Bytes after the gzip member (ignored by gzip(1), urllib3 and lenient servers)
        # made the body unreadable to the meter: no model, no limit, forwarded.
        trailing = gzip.compress(json.dumps(CHAT).encode(), mtime=0) + b"trailing bytes"
        lenient = client.post(
            url, content=trailing, headers={**headers, "content-encoding": "gzip"}
        )
    assert (gzipped.status_code, plain.status_code, lenient.status_code) == (413, 429, 429)
    assert len(fake_provider.exchanges) == 1
    rows = refused_rows(proxy, 3)
    assert sorted(r["reason"] for r in rows) == [
        "body_too_large",
        "limit:gpt-out",
        "limit:gpt-out",
    ]


def test_a_large_compressed_body_within_the_ratio_is_read_whole(
    meter_proxy: MeterProxy, fake_provider: FakeProvider
) -> None:
    """A 20 MiB streaming request (a base64 image, compressing ~1.3x) gzip'd: past the flat
    16 MiB the request had, it read as empty: no ``include_usage`` added, the call
    estimated with no input. Within 16 MiB + 16 x its compressed size, it is read whole."""
    image = base64.b64encode(random.Random(7).randbytes(15 * MiB)).decode()
    body = {
        "model": "gpt-4o",
        "stream": True,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}
                ],
            }
        ],
    }
    raw = json.dumps(body).encode()
    assert len(raw) > 20 * MiB
    fake_provider.reset()
    with httpx2.Client(proxy=meter_proxy.url, timeout=120) as client:
        r = client.post(
            fake_provider.base_url("openai") + "/v1/chat/completions",
            content=gzip.compress(raw, compresslevel=1, mtime=0),
            headers={
                "authorization": f"Bearer {KEYS['alice']}",
                "content-type": "application/json",
                "content-encoding": "gzip",
            },
        )
    assert r.status_code == 200
    ex = fake_provider.last()
    assert ex.body.endswith(b',"stream_options":{"include_usage":true}}')
    [row] = meter_proxy.wait_for_events([ex.request_id], timeout=30)
    assert ex.usage is not None and row_usage(row) == ex.usage
    assert row["streamed"] and not row["estimated"] and row["reason"] is None
