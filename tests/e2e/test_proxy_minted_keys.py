"""Ephemeral keys minted through the real proxy, and the voice sessions that use them.

A browser or phone app gets a short-lived key its backend minted (OpenAI's
``POST /v1/realtime/client_secrets``, the beta's ``/v1/realtime/sessions``, Gemini's
``POST /v1alpha/auth_tokens``) and opens its session with that key. Before, such a
session was billed to nobody, and refused in ``reject`` mode: the catalog cannot list a
key minted a minute ago. Now the key a consumer mints through the proxy is that
consumer's until it expires (:mod:`addons.metering.minted`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from websockets.exceptions import InvalidStatus

from meterline.fingerprint import fingerprint
from tests.conftest import KEYS, PROVIDER_KEYS, ProxyFactory
from tests.e2e.test_proxy_gemini_live import PATH as LIVE_PATH
from tests.e2e.test_proxy_gemini_live import LiveProvider, live_session
from tests.e2e.test_proxy_realtime import PROVIDER, RealtimeProvider, session
from tests.e2e.test_proxy_responses_websocket import wait_for_rows
from tests.support.aioserver import serve
from tests.support.proxy import write_catalog

CONSTRAINED = LIVE_PATH + "Constrained"


class Minter:
    """The provider's mint endpoints: a new key per call, the header that asked for it."""

    def __init__(self) -> None:
        self.minted: list[str] = []
        self.asked_with: list[str] = []

    def _next(self, request: web.Request, prefix: str) -> str:
        self.asked_with.append(
            request.headers.get("Authorization") or request.query.get("key") or ""
        )
        key = f"{prefix}{len(self.minted)}f00d{int(time.time() * 1000) % 10_000:04d}"
        self.minted.append(key)
        return key

    async def client_secrets(self, request: web.Request) -> web.Response:
        """GA: ``{"value": "ek_...", "expires_at": ..., "session": {...}}``."""
        body = await request.json()
        value = self._next(request, "ek_ga")
        expires = int(time.time()) + 600
        return web.json_response(
            {"value": value, "expires_at": expires, "session": body["session"]}
        )

    async def beta_sessions(self, request: web.Request) -> web.Response:
        """Beta: ``{"client_secret": {"value": "ek_...", "expires_at": ...}, ...}``."""
        value = self._next(request, "ek_beta")
        secret = {"value": value, "expires_at": int(time.time()) + 60}
        return web.json_response({"id": "sess_1", "object": "realtime.session",
                                  "client_secret": secret})  # fmt: skip

    async def auth_tokens(self, request: web.Request) -> web.Response:
        """Gemini: ``{"name": "auth_tokens/...", "expireTime": "<RFC 3339>"}``."""
        name = self._next(request, "auth_tokens/")
        expire = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1800))
        return web.json_response({"name": name, "expireTime": expire, "uses": 1})


@contextlib.contextmanager
def minting_upstream() -> Iterator[tuple[RealtimeProvider, Minter, int]]:
    """OpenAI's Realtime sessions and its mints (GA and beta), on 127.0.0.1."""
    provider, minter = RealtimeProvider(), Minter()
    routes = {
        ("GET", "/v1/realtime"): provider.handle,
        ("POST", "/v1/realtime/client_secrets"): minter.client_secrets,
        ("POST", "/v1/realtime/sessions"): minter.beta_sessions,
    }
    with serve(routes) as port:
        yield provider, minter, port


@pytest.fixture
def openai_upstream() -> Iterator[tuple[RealtimeProvider, Minter, int]]:
    with minting_upstream() as upstream:
        yield upstream


def realtime_catalog(tmp_path: Path, port: int, inject: bool = False) -> Path:
    fake = {"name": PROVIDER, "flavor": "openai", "hosts": [f"127.0.0.1:{port}"]}
    consumers = {"alice": [KEYS["alice"]], "carol": [KEYS["carol"]]}
    injected = {"carol": {PROVIDER: "METERLINE_TEST_OPENAI_KEY"}} if inject else None
    return write_catalog(tmp_path / "catalog.yaml", [fake], consumers, injected)


async def mint(proxy_url: str, port: int, key: str, beta: bool = False) -> str:
    """A key minted with the openai SDK through the proxy (the beta's raw POST)."""
    http_client = openai.DefaultAsyncHttpxClient(proxy=proxy_url)
    client = openai.AsyncOpenAI(
        api_key=key, base_url=f"http://127.0.0.1:{port}/v1", http_client=http_client
    )
    try:
        if beta:
            made: Any = await client.post(
                "/realtime/sessions", body={"model": "gpt-4o-realtime-preview"}, cast_to=object
            )
            return str(made["client_secret"]["value"])
        secret = await client.realtime.client_secrets.create(
            session={"type": "realtime", "model": "gpt-realtime"}
        )
        return secret.value
    finally:
        await client.close()


def test_a_session_on_a_key_alice_minted_is_billed_to_alice(
    start_proxy: ProxyFactory, tmp_path: Path, openai_upstream: tuple[RealtimeProvider, Minter, int]
) -> None:
    """In ``reject`` mode: alice mints a key (GA and beta endpoints) and opens a session
    with each; both are let through and billed to her, under the minted key's
    fingerprint. A key the proxy did not see minted is still refused (401), and no log
    line holds a minted key."""
    provider, minter, port = openai_upstream
    proxy = start_proxy(
        catalog=realtime_catalog(tmp_path, port), options={"meter_unknown_keys": "reject"}
    )
    ga = asyncio.run(mint(proxy.url, port, KEYS["alice"]))
    beta = asyncio.run(mint(proxy.url, port, KEYS["alice"], beta=True))
    assert [ga, beta] == minter.minted
    for key in (ga, beta):
        ended = asyncio.run(session(proxy, port, ["client"], key=key))
        assert [e["type"] for e in ended] == ["response.done"]
    assert [h["Authorization"] for h in provider.handshake_headers] == [
        f"Bearer {ga}", f"Bearer {beta}"
    ]  # fmt: skip

    with pytest.raises(InvalidStatus) as refused:
        asyncio.run(session(proxy, port, ["client"], key="ek_never_minted_here"))
    assert refused.value.response.status_code == 401
    assert provider.handshakes == 2

    rows = wait_for_rows(proxy, 3)
    billed = sorted((r["consumer"], r["key_fingerprint"]) for r in rows if r["response_id"])
    assert billed == sorted([("alice", fingerprint(ga)), ("alice", fingerprint(beta))])
    log = proxy.log_text()
    assert ga not in log and beta not in log and KEYS["alice"] not in log


def test_a_key_minted_with_an_injected_provider_key_reaches_the_provider_as_minted(
    start_proxy: ProxyFactory, tmp_path: Path, openai_upstream: tuple[RealtimeProvider, Minter, int]
) -> None:
    """carol's catalog injects OpenAI's real key: her mint reaches the provider with
    the real key (her gateway key never leaves the proxy), and the session on the key
    she minted goes upstream with that minted key, not replaced by the real one (it is
    the session's own credential), billed to carol."""
    provider, minter, port = openai_upstream
    proxy = start_proxy(catalog=realtime_catalog(tmp_path, port, inject=True))
    minted = asyncio.run(mint(proxy.url, port, KEYS["carol"]))
    real = PROVIDER_KEYS["METERLINE_TEST_OPENAI_KEY"]
    assert minter.asked_with == [f"Bearer {real}"]
    asyncio.run(session(proxy, port, ["client"], key=minted))
    assert provider.handshake_headers[0]["Authorization"] == f"Bearer {minted}"
    [row] = wait_for_rows(proxy, 1)
    assert (row["consumer"], row["key_fingerprint"]) == ("carol", fingerprint(minted))


def test_a_key_minted_by_a_stranger_stays_unattributed(
    start_proxy: ProxyFactory, tmp_path: Path, openai_upstream: tuple[RealtimeProvider, Minter, int]
) -> None:
    """A key the catalog does not know mints one: the minted key is nobody's either
    (recorded under its own fingerprint, no consumer), as its minter's calls are."""
    provider, minter, port = openai_upstream
    proxy = start_proxy(catalog=realtime_catalog(tmp_path, port))
    minted = asyncio.run(mint(proxy.url, port, "sk-stranger-0000"))
    asyncio.run(session(proxy, port, ["client"], key=minted))
    [row] = wait_for_rows(proxy, 1)
    assert (row["consumer"], row["key_fingerprint"]) == (None, fingerprint(minted))


def test_a_gemini_live_session_on_a_token_alice_minted_is_billed_to_alice(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Gemini: alice mints an ephemeral token (``POST /v1alpha/auth_tokens?key=``) and
    opens a Live session with it (``BidiGenerateContentConstrained?access_token=``), in
    ``reject`` mode: its two turns are billed to her."""
    live, minter = LiveProvider(), Minter()
    routes = {
        ("GET", CONSTRAINED): live.handle,
        ("POST", "/v1alpha/auth_tokens"): minter.auth_tokens,
    }
    with serve(routes) as port:
        gemini = {"name": "fake-gemini-live", "flavor": "gemini", "hosts": [f"127.0.0.1:{port}"]}
        catalog = write_catalog(tmp_path / "catalog.yaml", [gemini], {"alice": [KEYS["alice"]]})
        proxy = start_proxy(catalog=catalog, options={"meter_unknown_keys": "reject"})

        async def mint_and_talk() -> int:
            async with aiohttp.ClientSession() as client:
                url = f"http://127.0.0.1:{port}/v1alpha/auth_tokens?key={KEYS['alice']}"
                async with client.post(url, json={"uses": 1}, proxy=proxy.url) as reply:
                    token = (await reply.json())["name"]
            ended = await live_session(
                proxy, port, token, path=CONSTRAINED, key_param="access_token"
            )
            return len(ended)

        assert asyncio.run(mint_and_talk()) == 2
        rows = wait_for_rows(proxy, 2)
        token = minter.minted[0]
        assert [(r["consumer"], r["key_fingerprint"]) for r in rows] == [
            ("alice", fingerprint(token))
        ] * 2
        assert "auth_tokens/" not in str(rows) + proxy.log_text()


@pytest.mark.parametrize("stop", ["sigterm", "kill -9"])
def test_a_key_minted_before_a_restart_is_still_the_minters(
    start_proxy: ProxyFactory,
    tmp_path: Path,
    openai_upstream: tuple[RealtimeProvider, Minter, int],
    stop: str,
) -> None:
    """In ``reject`` mode: alice mints a key, the proxy restarts (stopped or killed), and
    the session on that key is let through and billed to her. Before, the proxy kept
    minted keys in memory only: after any restart, a voice app's key minted a minute
    earlier was refused (401), or billed to no one in ``record`` mode. What is kept is
    two fingerprints and an expiry per key, 0600, never the key."""
    provider, minter, port = openai_upstream
    proxy = start_proxy(
        catalog=realtime_catalog(tmp_path, port), options={"meter_unknown_keys": "reject"}
    )
    key = asyncio.run(mint(proxy.url, port, KEYS["alice"]))
    kept = proxy.spool / "minted-keys.log"
    deadline = time.monotonic() + 10
    while not (kept.exists() and fingerprint(key) in kept.read_text()):
        assert time.monotonic() < deadline, "the minted key never reached the spool's file"
        time.sleep(0.05)
    if stop == "sigterm":
        proxy.stop()
    else:
        proxy.kill()
    assert key not in kept.read_text() and KEYS["alice"] not in kept.read_text()
    assert kept.stat().st_mode & 0o777 == 0o600
    again = proxy.again()
    again.start()
    try:
        ended = asyncio.run(session(again, port, ["client"], key=key))
        assert [e["type"] for e in ended] == ["response.done"]
        assert provider.handshakes == 1
        rows = wait_for_rows(again, 1)
        assert [(r["consumer"], r["key_fingerprint"]) for r in rows if r["response_id"]] == [
            ("alice", fingerprint(key))
        ]
    finally:
        again.stop()
