"""Gemini's Live API (``BidiGenerateContent`` upgraded) through the real proxy.

A fake Live server on 127.0.0.1 speaks the documented protocol: the client's ``setup``
names the model, ``setupComplete`` answers it, and each model turn ends with a server
message carrying the turn's ``usageMetadata`` (output as ``responseTokenCount`` and
``responseTokensDetails``); server messages come as binary frames, as Google's do. Before,
the session passed through unmetered and unlogged: a Gemini voice agent billed nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import pytest
from aiohttp import web

from addons.metering.geminilive import REFUSED_MODEL
from tests.conftest import KEYS, ProxyFactory
from tests.e2e.test_proxy_responses_websocket import wait_for_rows
from tests.support.aioserver import serve
from tests.support.governance import with_plan
from tests.support.proxy import USAGE_COLUMNS, MeterProxy, row_usage, write_catalog

PROVIDER = "fake-gemini-live"
PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
MODEL = "gemini-2.5-flash-native-audio-preview-09-2025"
AUDIO = base64.b64encode(bytes(range(256)) * 64).decode()

#: Each turn's usage as the Live API reports it: the prompt re-reads the conversation.
TURNS: list[dict[str, Any]] = [
    {
        "promptTokenCount": 373,
        "responseTokenCount": 23,
        "totalTokenCount": 396,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 373}],
        "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": 23}],
    },
    {
        "promptTokenCount": 520,
        "cachedContentTokenCount": 100,
        "responseTokenCount": 40,
        "thoughtsTokenCount": 12,
        "totalTokenCount": 572,
        "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": 400},
            {"modality": "AUDIO", "tokenCount": 120},
        ],
        "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 100}],
        "responseTokensDetails": [
            {"modality": "TEXT", "tokenCount": 10},
            {"modality": "AUDIO", "tokenCount": 30},
        ],
    },
]
ZERO = dict.fromkeys(USAGE_COLUMNS, 0)
#: The same in the token model: uncached audio input and audio output apart, thinking
#: billed as (text) output.
BILLED = [
    {**ZERO, "input": 373, "audio_output": 23},
    {**ZERO, "input": 300, "cached_input": 100, "audio_input": 120, "output": 10 + 12,
     "audio_output": 30, "reasoning": 12},
]  # fmt: skip


class LiveProvider:
    """A fake Gemini Live server: ``setupComplete`` for the ``setup``, then for each client
    turn (``clientContent`` with ``turnComplete``, or an audio ``realtimeInput`` ended by
    ``audioStreamEnd``) two audio chunks and a ``turnComplete`` message with the turn's
    usage, all as binary frames."""

    def __init__(self) -> None:
        self.setups: list[dict[str, Any]] = []
        self.received: list[str] = []
        """The kind of every client message received (``setup``, ``clientContent``...)."""
        self.closed = threading.Event()
        """Set when a session's socket closed (every message before it was received)."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        try:
            await self._turns(ws)
        finally:
            self.closed.set()
        return ws

    async def _turns(self, ws: web.WebSocketResponse) -> None:
        turn = 0
        async for msg in ws:
            message = json.loads(msg.data)
            self.received.extend(message)
            if "setup" in message:
                self.setups.append(message["setup"])
                model = message["setup"].get("model", "")
                if not model.startswith("models/gemini"):  # as Gemini answers one it lacks
                    await ws.close(code=1008, message=f"{model} is not found".encode()[:120])
                    break
                await ws.send_bytes(json.dumps({"setupComplete": {}}).encode())
                continue
            ends_turn = message.get("clientContent", {}).get("turnComplete") or message.get(
                "realtimeInput", {}
            ).get("audioStreamEnd")
            if not ends_turn:
                continue
            chunk = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": AUDIO}}
            for _ in range(2):
                content = {"serverContent": {"modelTurn": {"parts": [chunk]}}}
                await ws.send_bytes(json.dumps(content).encode())
            usage = TURNS[turn % len(TURNS)]
            done = {"serverContent": {"turnComplete": True}, "usageMetadata": usage}
            await ws.send_bytes(json.dumps(done).encode())
            turn += 1


@pytest.fixture
def upstream() -> Iterator[tuple[LiveProvider, int]]:
    provider = LiveProvider()
    with serve({("GET", PATH): provider.handle}) as port:
        yield provider, port


async def live_session(
    proxy: MeterProxy, port: int, key: str, path: str = PATH, key_param: str = "key"
) -> list[dict[str, Any]]:
    """A text turn, then an audio turn; the server messages that ended each turn."""
    ended: list[dict[str, Any]] = []
    setup = {"setup": {"model": f"models/{MODEL}",
                       "generationConfig": {"responseModalities": ["AUDIO"]}}}  # fmt: skip
    text_turn = {"clientContent": {"turns": [{"role": "user", "parts": [{"text": "Hi"}]}],
                                   "turnComplete": True}}  # fmt: skip
    audio = {"audio": {"mimeType": "audio/pcm;rate=16000", "data": AUDIO}}
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            f"http://127.0.0.1:{port}{path}?{key_param}={key}", proxy=proxy.url, max_msg_size=0
        ) as ws,
    ):
        await ws.send_str(json.dumps(setup))
        assert json.loads((await ws.receive()).data) == {"setupComplete": {}}
        for turn in ([text_turn], [{"realtimeInput": audio},
                                   {"realtimeInput": {"audioStreamEnd": True}}]):  # fmt: skip
            for message in turn:
                await ws.send_str(json.dumps(message))
            async for msg in ws:
                received = json.loads(msg.data)
                if received.get("serverContent", {}).get("turnComplete"):
                    ended.append(received)
                    break
    return ended


def live_catalog(tmp_path: Path, port: int) -> Path:
    gemini = {"name": PROVIDER, "flavor": "gemini", "hosts": [f"127.0.0.1:{port}"]}
    return write_catalog(tmp_path / "catalog.yaml", [gemini], {"alice": [KEYS["alice"]]})


def test_each_turn_of_a_gemini_live_session_is_one_event(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[LiveProvider, int]
) -> None:
    provider, port = upstream
    proxy = start_proxy(catalog=live_catalog(tmp_path, port))
    ended = asyncio.run(live_session(proxy, port, KEYS["alice"]))
    assert [e["usageMetadata"] for e in ended] == TURNS
    assert provider.setups[0]["model"] == f"models/{MODEL}"

    rows = sorted(wait_for_rows(proxy, 2), key=lambda r: r["input_tokens"], reverse=True)
    assert len(rows) == 2
    assert [row_usage(r) for r in rows] == BILLED
    for row in rows:
        assert (row["consumer"], row["provider"], row["model"]) == ("alice", PROVIDER, MODEL)
        assert (row["path"], row["status"], row["streamed"]) == (PATH, 200, True)
        assert (row["estimated"], row["reason"]) == (False, None)
    assert KEYS["alice"] not in proxy.log_text()


async def session_past_the_limit(proxy: MeterProxy, port: int, key: str) -> list[dict[str, Any]]:
    """The two turns of :func:`live_session`, then a third text turn; every server message
    the client got after the second turn ended, until it closed the session."""
    setup = {"setup": {"model": f"models/{MODEL}"}}
    text_turn = {"clientContent": {"turns": [{"role": "user", "parts": [{"text": "Hi"}]}],
                                   "turnComplete": True}}  # fmt: skip
    audio = {"audio": {"mimeType": "audio/pcm;rate=16000", "data": AUDIO}}
    turns = [[text_turn], [{"realtimeInput": audio}, {"realtimeInput": {"audioStreamEnd": True}}]]
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            f"http://127.0.0.1:{port}{PATH}?key={key}", proxy=proxy.url, max_msg_size=0
        ) as ws,
    ):
        await ws.send_str(json.dumps(setup))
        await ws.receive()
        for turn in turns:
            for message in turn:
                await ws.send_str(json.dumps(message))
            async for msg in ws:
                if json.loads(msg.data).get("serverContent", {}).get("turnComplete"):
                    break
        after = [json.loads((await ws.receive(timeout=10)).data)]
        await ws.send_str(json.dumps(text_turn))  # the third turn: dropped by the proxy
    return after


def test_past_a_hard_limit_a_live_session_ends_and_no_new_one_opens(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[LiveProvider, int]
) -> None:
    """A hard limit of 500 input tokens (text, cached and audio). A Live session has no
    turn the proxy could refuse (the server starts each one when it hears the user), so
    its usage is counted as it comes: the turn that crosses the limit (373, then 520) is
    metered, the client is told the session is over (``goAway``, no time left) and none
    of its later messages reach the provider, so nothing more is billed; the refusal is
    stored once. The next session's upgrade is refused: 429 in Gemini's shape, the
    provider never sees it. Before, the open session ran on past the limit (a third turn
    was forwarded and billed), and earlier still no usage was counted at all."""
    provider, port = upstream
    meter = {"provider": PROVIDER, "token_types": ["input", "cached_input", "audio_input"]}
    features = [{"key": "live-in", "name": "Live input", "meter": meter}]
    capped = [{"feature": "live-in", "limit": 500}]
    catalog = with_plan(live_catalog(tmp_path, port), features, capped)
    proxy = start_proxy(catalog=catalog)
    after = asyncio.run(session_past_the_limit(proxy, port, KEYS["alice"]))
    assert after == [{"goAway": {"timeLeft": "0s"}}]
    assert provider.closed.wait(10)
    assert provider.received == ["setup", "clientContent", "realtimeInput", "realtimeInput"]

    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        asyncio.run(live_session(proxy, port, KEYS["alice"]))
    assert refused.value.status == 429
    assert len(provider.setups) == 1
    rows = wait_for_rows(proxy, 4)
    assert sorted(r["input_tokens"] + r["cached_input_tokens"] + r["audio_input_tokens"]
                  for r in rows if not r["reason"]) == [373, 520]  # fmt: skip
    refusals = [r for r in rows if r["reason"]]
    assert [r["reason"] for r in refusals] == ["limit:live-in"] * 2
    for row in refusals:
        assert (row["consumer"], row["status"], row["method"], row["path"]) == (
            "alice", 429, "GET", PATH
        )  # fmt: skip
        assert row["input_tokens"] == row["audio_output_tokens"] == 0
    assert "Live session of alice ended: limit:live-in" in proxy.log_text()


async def setup_with(
    proxy: MeterProxy, port: int, model: str, escaped: bool = False
) -> tuple[int | None, str]:
    """Open a Live session naming ``model`` (``escaped``: the ``setup`` key spelt with a
    JSON escape): how the socket ended (close code, reason)."""
    setup = json.dumps({"setup": {"model": model}})
    if escaped:
        setup = setup.replace('"setup"', '"\\u0073etup"')
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"http://127.0.0.1:{port}{PATH}?key={KEYS['alice']}",
                           proxy=proxy.url) as ws,
    ):  # fmt: skip
        await ws.send_str(setup)
        msg = await ws.receive()
        return ws.close_code, str(msg.extra or msg.data)


@pytest.mark.parametrize("escaped", [False, True])
def test_a_live_session_on_a_model_the_plan_does_not_include_never_starts(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[LiveProvider, int], escaped: bool
) -> None:
    """The plan includes only ``gemini-2.5-flash*``; a ``setup`` naming
    ``gemini-2.5-pro-live`` is sent upstream as :data:`REFUSED_MODEL`, so the provider
    closes the session (1008) before any turn, its reason naming the refusal, and the
    refusal is stored (403, ``not_granted``). Before, the session ran and every turn
    was billed on a model the plan does not include; until 3 December, a ``setup`` key
    spelt ``"\\u0073etup"`` (a setup to any JSON parser) still skipped the check, and its
    turns were stored with no model."""
    provider, port = upstream
    meter = {"provider": PROVIDER, "model": "gemini-2.5-flash*"}
    features = [{"key": "flash", "name": "Flash", "meter": meter}]
    catalog = with_plan(
        live_catalog(tmp_path, port), features, [{"feature": "flash", "type": "boolean"}]
    )
    proxy = start_proxy(catalog=catalog)
    code, reason = asyncio.run(setup_with(proxy, port, "models/gemini-2.5-pro-live", escaped))
    assert code == 1008 and "refused-by-meterline" in reason
    assert [s["model"] for s in provider.setups] == [REFUSED_MODEL]
    [row] = wait_for_rows(proxy, 1)
    assert (row["reason"], row["status"], row["model"]) == (
        "not_granted",
        403,
        "gemini-2.5-pro-live",
    )
    ended = asyncio.run(live_session(proxy, port, KEYS["alice"]))  # a model it includes
    assert len(ended) == 2 and provider.setups[-1]["model"] == f"models/{MODEL}"


def test_a_limit_only_held_by_a_call_in_flight_does_not_end_a_live_session(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """A hard limit of 5,000 output tokens; a ``generateContent`` call asking for up to
    5,000 holds all of it while it runs. The Live session's turns meanwhile (23 and 40
    output tokens) are refused only as "held by calls in flight" (retry in a moment):
    that ends no session, both turns run. Before, the first turn's check ended the
    session for good (``goAway``, the next turn dropped) with 25 of 5,000 used."""
    live = LiveProvider()
    arrived, release = threading.Event(), threading.Event()

    async def slow_generate(request: web.Request) -> web.StreamResponse:
        await request.read()
        arrived.set()
        while not release.is_set():
            await asyncio.sleep(0.02)
        usage = {"promptTokenCount": 5, "candidatesTokenCount": 2, "totalTokenCount": 7}
        part = {"content": {"parts": [{"text": "ok"}], "role": "model"}, "finishReason": "STOP"}
        return web.json_response({"candidates": [part], "usageMetadata": usage})

    routes = {("GET", PATH): live.handle, ("POST", "/v1beta/models/{model}"): slow_generate}
    with serve(routes) as port:
        meter = {"provider": PROVIDER, "token_types": ["output", "audio_output"]}
        features = [{"key": "out", "name": "Output", "meter": meter}]
        catalog = with_plan(
            live_catalog(tmp_path, port), features, [{"feature": "out", "limit": 5000}]
        )
        proxy = start_proxy(catalog=catalog)
        url = f"http://127.0.0.1:{port}/v1beta/models/gemini-2.5-flash:generateContent"
        body = {"contents": [{"parts": [{"text": "hi"}]}],
                "generationConfig": {"maxOutputTokens": 5000}}  # fmt: skip

        def held_call() -> int:
            with httpx2.Client(proxy=proxy.url, timeout=30) as client:
                return client.post(url, params={"key": KEYS["alice"]}, json=body).status_code

        async def turns_while_held(pool: ThreadPoolExecutor) -> list[dict[str, Any]]:
            """The session opens, then the call starts and holds; two turns run."""
            ended: list[dict[str, Any]] = []
            text = {"clientContent": {"turns": [{"role": "user", "parts": [{"text": "Hi"}]}],
                                      "turnComplete": True}}  # fmt: skip
            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(f"http://127.0.0.1:{port}{PATH}?key={KEYS['alice']}",
                                   proxy=proxy.url) as ws,
            ):  # fmt: skip
                await ws.send_str(json.dumps({"setup": {"model": f"models/{MODEL}"}}))
                await ws.receive(timeout=10)
                calls.append(pool.submit(held_call))
                assert await asyncio.to_thread(arrived.wait, 10)
                for _ in TURNS:
                    await ws.send_str(json.dumps(text))
                    while "usageMetadata" not in (
                        got := json.loads((await ws.receive(timeout=10)).data)
                    ):
                        assert "goAway" not in got
                    ended.append(got)
            return ended

        calls: list[Any] = []
        with ThreadPoolExecutor(1) as pool:
            ended = asyncio.run(turns_while_held(pool))
            release.set()
            assert calls[0].result(10) == 200
    assert [e["usageMetadata"] for e in ended] == TURNS
    rows = wait_for_rows(proxy, 3)
    assert [r["reason"] for r in rows] == [None] * 3
    assert "Live session of alice ended" not in proxy.log_text()
