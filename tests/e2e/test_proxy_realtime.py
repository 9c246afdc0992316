"""OpenAI's Realtime API (``GET /v1/realtime`` upgraded) through the real proxy, driven by
the official openai SDK's ``realtime.connect()``.

A session bills per response (``response.done``: text, audio and image input, cached or
not, text and audio output) on the session's model, and per input transcription on the
transcription model. Before, a session passed through unmetered (one warning line): a
voice agent's whole conversation was billed nothing. Responses are created by the client
(``response.create``) or by the server when it hears the end of a turn (simulated here by
``input_audio_buffer.commit``), so limits apply to both: a client's turn past a hard limit
is dropped, a server's is cancelled (``response.cancel``) when it is announced.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
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
from tests.e2e.test_proxy_responses_websocket import wait_for_rows
from tests.support.aioserver import serve
from tests.support.governance import with_plan
from tests.support.proxy import (
    USAGE_COLUMNS,
    MeterProxy,
    one_provider_catalog,
    row_usage,
    write_catalog,
)

PROVIDER = "fake-realtime"
URL_MODEL = "gpt-realtime"
SESSION_MODEL = "gpt-realtime-2025-08-28"
TRANSCRIBER = "gpt-4o-transcribe"
AUDIO = base64.b64encode(bytes(range(256)) * 256).decode()  # 64 KiB of "audio" per delta


def response_usage(n: int, cancelled: bool = False) -> dict[str, Any]:
    """Response ``n``'s usage as the Realtime API reports it (text + audio input, a
    share of each cached, text + audio output)."""
    text, audio = (10, 30) if cancelled else (100, 300)
    out = {"text_tokens": text, "audio_tokens": audio}
    return {
        "total_tokens": 1000 + n + sum(out.values()),
        "input_tokens": 1000 + n,
        "output_tokens": sum(out.values()),
        "input_token_details": {
            "text_tokens": 300 + n,
            "audio_tokens": 700,
            "image_tokens": 0,
            "cached_tokens": 200,
            "cached_tokens_details": {"text_tokens": 150, "audio_tokens": 50, "image_tokens": 0},
        },  # fmt: skip
        "output_token_details": out,
    }


def billed(n: int, cancelled: bool = False) -> dict[str, int]:
    """``response_usage(n)`` in the token model: uncached audio apart from text input,
    audio output apart from text output."""
    zero = dict.fromkeys(USAGE_COLUMNS, 0)
    out, audio_out = (10, 30) if cancelled else (100, 300)
    return {**zero, "input": 150 + n, "cached_input": 150, "cached_audio_input": 50,
            "audio_input": 650, "output": out, "audio_output": audio_out}  # fmt: skip


TRANSCRIPTION_USAGE = {"type": "tokens", "input_tokens": 120, "output_tokens": 30,
                       "total_tokens": 150,
                       "input_token_details": {"text_tokens": 20, "audio_tokens": 100}}  # fmt: skip
TRANSCRIBED = {**dict.fromkeys(USAGE_COLUMNS, 0), "input": 20, "audio_input": 100, "output": 30}


class RealtimeProvider:
    """A fake Realtime API: ``session.created`` on connect, ``session.updated`` for each
    ``session.update``; a response for each ``response.create`` and, as server VAD does,
    for each ``input_audio_buffer.commit`` (after the commit's transcription). After
    announcing a response it waits for the client's next message: a ``response.cancel``
    ends the response cancelled (with what it generated so far), anything else lets it
    complete."""

    def __init__(self) -> None:
        self.handshakes = 0
        self.handshake_headers: list[dict[str, str]] = []
        self.received: list[str] = []
        self.served: list[str] = []
        self.deltas = 1
        """Audio deltas per response."""
        self.delta = AUDIO
        self.reports_usage = True
        """Whether ``response.done`` carries usage (xAI's voice sessions bill by time)."""
        self.transcription_usage: dict[str, Any] = TRANSCRIPTION_USAGE
        self.repeat_earlier = False
        """After each response.done, send the one before it again (out of order)."""
        self.dones: list[str] = []
        self.binary = False
        """Send every event as a binary frame (the JSON bytes), as some servers do."""
        self.gated = False
        """Queue ``response.create``s until a ``conversation.item.retrieve``, then answer
        them all (out-of-band responses asked for together)."""
        self.queued = 0

    async def send(self, ws: web.WebSocketResponse, text: str) -> None:
        await (ws.send_bytes(text.encode()) if self.binary else ws.send_str(text))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.handshakes += 1
        self.handshake_headers.append(dict(request.headers))
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        session = {"type": "realtime", "object": "realtime.session", "id": "sess_1",
                   "model": SESSION_MODEL, "output_modalities": ["audio"],
                   "audio": {"input": {"transcription": {"model": TRANSCRIBER}}}}  # fmt: skip
        await self.send(ws, json.dumps({"type": "session.created", "event_id": "e0",
                                      "session": session}))  # fmt: skip
        async for msg in ws:
            event = json.loads(msg.data)
            kind = event["type"]
            self.received.append(kind)
            if kind == "session.update":
                session = {**session, **event["session"]}
                await self.send(ws, json.dumps({"type": "session.updated", "session": session}))
            elif kind == "response.create" and self.gated:
                self.queued += 1
            elif kind == "conversation.item.retrieve" and self.queued:
                for _ in range(self.queued):
                    await self.respond(ws, wait=False)
                self.queued = 0
            elif kind == "response.create":
                await self.respond(ws)
            elif kind == "input_audio_buffer.commit":
                item = f"item_{len(self.received)}"
                await self.send(ws, json.dumps({"type": "input_audio_buffer.committed",
                                              "item_id": item}))  # fmt: skip
                transcribed = {"type": "conversation.item.input_audio_transcription.completed",
                               "event_id": f"e_{item}", "item_id": item, "content_index": 0,
                               "transcript": "Hi.", "usage": self.transcription_usage}  # fmt: skip
                for _ in range(2):  # a repeat bills once
                    await self.send(ws, json.dumps(transcribed))
                await self.respond(ws)
        return ws

    async def respond(self, ws: web.WebSocketResponse, wait: bool = True) -> None:
        """One response; ``wait``: for the client's next message after announcing it (a
        ``response.cancel`` cancels it)."""
        n = len(self.served)
        rid = f"resp_rt_{n}"
        self.served.append(rid)
        response: dict[str, Any] = {"id": rid, "object": "realtime.response", "output": [],
                                    "status": "in_progress", "max_output_tokens": "inf",
                                    "usage": None}  # fmt: skip
        await self.send(ws, json.dumps({"type": "response.created", "response": response}))
        cancelled = False
        if wait:
            nxt = await ws.receive()
            cancelled = json.loads(nxt.data)["type"] == "response.cancel"
            self.received.append("response.cancel" if cancelled else "go on")
        delta = json.dumps({"type": "response.output_audio.delta", "response_id": rid,
                            "item_id": "item_a", "delta": self.delta})  # fmt: skip
        for _ in range(self.deltas):
            await self.send(ws, delta)
        done = {**response, "status": "cancelled" if cancelled else "completed",
                "usage": response_usage(n, cancelled) if self.reports_usage else None}  # fmt: skip
        self.dones.append(json.dumps({"type": "response.done", "response": done}))
        for _ in range(2 if n == 0 else 1):  # a repeated response.done bills once
            await self.send(ws, self.dones[-1])
        if self.repeat_earlier and n:
            await self.send(ws, self.dones[-2])


@pytest.fixture
def upstream() -> Iterator[tuple[RealtimeProvider, int]]:
    provider = RealtimeProvider()
    with serve({("GET", "/v1/realtime"): provider.handle}) as port:
        yield provider, port


async def session(
    proxy: MeterProxy,
    port: int,
    turns: list[str],
    update: dict[str, Any] | None = None,
    key: str = KEYS["alice"],
) -> list[dict[str, Any]]:
    """One Realtime session through the proxy with the openai SDK: ``session.update``
    first if given, then each turn (``"client"``: ``response.create``; ``"server"``: an
    audio buffer committed, answered as server VAD does). The events that ended each turn
    (``response.done`` or ``error``), and the errors the proxy sent."""
    client = openai.AsyncOpenAI(api_key=key, base_url=f"http://127.0.0.1:{port}/v1")
    ended: list[dict[str, Any]] = []
    seen: set[str | None] = set()  # a repeated response.done ends nothing
    through: Any = {"proxy": proxy.url}  # websockets' own option; the SDK passes it on
    async with client.realtime.connect(
        model=URL_MODEL, websocket_connection_options=through
    ) as conn:
        if update is not None:
            await conn.session.update(session=update)  # type: ignore[arg-type]
        for turn in turns:
            if turn == "client":
                await conn.response.create()
            else:
                await conn.input_audio_buffer.append(audio=AUDIO)
                await conn.input_audio_buffer.commit()
            async for event in conn:
                if event.type == "response.created":
                    await conn.send({"type": "conversation.item.retrieve", "item_id": "go"})
                elif event.type == "error":
                    ended.append(event.model_dump())
                    if turn == "client":
                        break  # a refused create: nothing else comes
                elif event.type == "response.done" and event.response.id not in seen:
                    seen.add(event.response.id)
                    ended.append(event.model_dump())
                    break
    await client.close()
    return ended


def test_a_realtime_session_is_billed_per_response_and_per_transcription(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[RealtimeProvider, int]
) -> None:
    """Two responses (the client's and the server's own) on the session's model, with
    the cached share, the uncached audio and the audio output apart; the transcription
    on the model the client's ``session.update`` chose (its repeated event bills once)."""
    provider, port = upstream
    catalog = one_provider_catalog(
        tmp_path / "catalog.yaml", PROVIDER, port, {"alice": [KEYS["alice"]]}
    )
    proxy = start_proxy(catalog=catalog)
    chosen = {"transcription": {"model": "gpt-4o-mini-transcribe"}}
    update = {"type": "realtime", "audio": {"input": chosen}}
    ended = asyncio.run(session(proxy, port, ["client", "server"], update))
    assert [e["type"] for e in ended] == ["response.done", "response.done"]
    assert [e["response"]["usage"] for e in ended] == [response_usage(0), response_usage(1)]

    rows = wait_for_rows(proxy, 3)
    assert len(rows) == 3, rows
    responses = sorted((r for r in rows if r["response_id"]), key=lambda r: r["response_id"])
    assert [r["response_id"] for r in responses] == provider.served == ["resp_rt_0", "resp_rt_1"]
    assert [row_usage(r) for r in responses] == [billed(0), billed(1)]
    [transcription] = [r for r in rows if not r["response_id"]]
    assert row_usage(transcription) == TRANSCRIBED
    assert transcription["model"] == "gpt-4o-mini-transcribe"
    for row in rows:
        assert (row["consumer"], row["provider"]) == ("alice", PROVIDER)
        assert row["path"] == "/v1/realtime"
        assert (row["status"], row["streamed"], row["estimated"]) == (200, True, False)
        assert row["reason"] is None
    assert {r["model"] for r in responses} == {SESSION_MODEL}
    assert "Realtime" not in proxy.log_text()  # no "billed but not metered" line any more


def capped_catalog(
    tmp_path: Path, port: int, limit: int, model: str | None = None, boolean: bool = False
) -> Path:
    """alice on a plan with a hard limit of ``limit`` output tokens, text and audio (of
    the models matching ``model``; ``boolean``: those models allowed, no others)."""
    catalog = one_provider_catalog(
        tmp_path / "catalog.yaml", PROVIDER, port, {"alice": [KEYS["alice"]]}
    )
    meter = {"provider": PROVIDER, "token_types": ["output", "audio_output"]}
    if model is not None:
        meter["model"] = model
    features = [{"key": "out", "name": "Output", "meter": meter}]
    entitlement: dict[str, Any] = {"feature": "out", "limit": limit}
    if boolean:
        entitlement = {"feature": "out", "type": "boolean"}
    return with_plan(catalog, features, [entitlement])


def test_past_a_hard_limit_the_servers_response_is_cancelled_and_the_clients_dropped(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[RealtimeProvider, int]
) -> None:
    """A hard limit of 500 output tokens. The client's response (400) and the server's
    first (430 used: 400 + a transcription's 30) are admitted; the server's second (860
    used) is cancelled as it is announced: the provider gets ``response.cancel``, the
    client an ``error``, and the 40 tokens it had generated are billed. The client's
    ``response.create`` after that never reaches the provider."""
    provider, port = upstream
    proxy = start_proxy(catalog=capped_catalog(tmp_path, port, 500))
    ended = asyncio.run(session(proxy, port, ["client", "server", "server", "client"]))
    assert [e["type"] for e in ended] == [
        "response.done", "response.done", "error", "response.done", "error"
    ]  # fmt: skip
    assert [e["response"]["status"] for e in ended if e["type"] == "response.done"] == [
        "completed", "completed", "cancelled"
    ]  # fmt: skip
    for error in (ended[2], ended[4]):
        assert error["error"]["message"] and error["event_id"]
    assert provider.received.count("response.cancel") == 1
    assert provider.received.count("response.create") == 1  # the refused one was dropped

    rows = wait_for_rows(proxy, 7)
    metered = sorted((r for r in rows if r["response_id"]), key=lambda r: r["response_id"])
    assert [row_usage(r) for r in metered] == [billed(0), billed(1), billed(2, cancelled=True)]
    assert sum(1 for r in rows if not r["response_id"] and r["reason"] is None) == 2
    refused = [r for r in rows if r["reason"] is not None]
    assert [(r["reason"], r["status"], r["output_tokens"]) for r in refused] == [
        ("limit:out", 429, 0), ("limit:out", 429, 0)
    ]  # fmt: skip
    assert len(rows) == 7


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory so far (``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_long_session_does_not_pile_up_in_the_proxys_memory(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[RealtimeProvider, int]
) -> None:
    """96 MiB of audio on one session: mitmproxy keeps every message of a socket until it
    closes (before: the proxy's peak memory grew by all of it, +116 MiB measured); the
    meter keeps only the latest message of the sockets it meters."""
    provider, port = upstream
    catalog = one_provider_catalog(
        tmp_path / "catalog.yaml", PROVIDER, port, {"alice": [KEYS["alice"]]}
    )
    proxy = start_proxy(catalog=catalog)
    assert proxy.process is not None
    asyncio.run(session(proxy, port, ["client"]))  # warm: the hooks and the spool loaded
    before = peak_rss_mib(proxy.process.pid)
    provider.deltas, provider.delta = 192, base64.b64encode(b"\x01" * 384 * 1024).decode()
    ended = asyncio.run(session(proxy, port, ["client"]))
    grown = peak_rss_mib(proxy.process.pid) - before
    assert [e["type"] for e in ended] == ["response.done"]
    assert grown < 40, f"the proxy's peak memory grew by {grown:.0f} MiB"
    assert len(wait_for_rows(proxy, 2)) == 2


def test_what_a_session_reports_no_tokens_for_is_logged_once_and_not_stored(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[RealtimeProvider, int]
) -> None:
    """Responses without usage (a voice session billed by the minute, as xAI's) and
    transcriptions billed by seconds of audio (``whisper-1``) are not estimated into
    made-up tokens: nothing is stored, and each is said once, not per turn."""
    provider, port = upstream
    provider.reports_usage = False
    provider.transcription_usage = {"type": "duration", "seconds": 2.5}
    catalog = one_provider_catalog(
        tmp_path / "catalog.yaml", PROVIDER, port, {"alice": [KEYS["alice"]]}
    )
    proxy = start_proxy(catalog=catalog)
    ended = asyncio.run(session(proxy, port, ["client", "server", "server"]))
    assert [e["type"] for e in ended] == ["response.done"] * 3
    provider.reports_usage = True
    asyncio.run(session(proxy, port, ["client"]))  # the next session's usage is metered
    [row] = wait_for_rows(proxy, 1)
    assert row["response_id"] == provider.served[-1]
    log = proxy.log_text()
    assert log.count("Realtime response.done without usage: not metered") == 1
    assert log.count("billed by duration (seconds of audio), not in tokens: not metered") == 1


def test_a_session_on_a_model_the_plan_does_not_include_never_opens(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[RealtimeProvider, int]
) -> None:
    """A plan that includes only ``gpt-realtime-mini*``: a session asking for
    ``gpt-realtime`` is refused at its upgrade (403, the provider never sees it) and
    stored with its reason. Before, it opened and every response went through."""
    provider, port = upstream
    proxy = start_proxy(catalog=capped_catalog(tmp_path, port, 0, "gpt-realtime-mini*", True))
    with pytest.raises(InvalidStatus) as refused:
        asyncio.run(session(proxy, port, ["client"]))
    assert refused.value.response.status_code == 403
    assert b"does not include model 'gpt-realtime'" in refused.value.response.body
    assert provider.handshakes == 0
    [row] = wait_for_rows(proxy, 1)
    assert (row["reason"], row["status"], row["model"]) == ("not_granted", 403, URL_MODEL)
    assert (row["consumer"], row["method"], row["path"]) == ("alice", "GET", "/v1/realtime")


def test_a_response_done_repeated_after_another_response_bills_once(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[RealtimeProvider, int]
) -> None:
    """Responses running side by side (an out-of-band one beside the conversation's) end
    in any order, and a repeated ``response.done`` may come after another response's.
    Before, only the latest id was remembered: each repeat billed again."""
    provider, port = upstream
    provider.repeat_earlier = True
    catalog = one_provider_catalog(
        tmp_path / "catalog.yaml", PROVIDER, port, {"alice": [KEYS["alice"]]}
    )
    proxy = start_proxy(catalog=catalog)
    asyncio.run(session(proxy, port, ["client", "client", "client"]))
    rows = wait_for_rows(proxy, 3)
    assert sorted(r["response_id"] for r in rows) == provider.served
    assert len(provider.served) == 3
    assert len(wait_for_rows(proxy, 4, timeout=1.0)) == 3  # and no repeat came later


async def browser_session(proxy: MeterProxy, port: int, key: str) -> str:
    """A session opened as a browser does (the key as a subprotocol), one client turn:
    the type of the event that ended it."""
    protocols = ("realtime", f"openai-insecure-api-key.{key}")
    async with (
        aiohttp.ClientSession() as client,
        client.ws_connect(f"http://127.0.0.1:{port}/v1/realtime?model={URL_MODEL}",
                          proxy=proxy.url, protocols=protocols) as ws,
    ):  # fmt: skip
        await ws.send_str(json.dumps({"type": "response.create"}))
        while True:
            event = json.loads((await ws.receive()).data)
            if event["type"] == "response.created":
                await ws.send_str(json.dumps({"type": "conversation.item.retrieve"}))
            elif event["type"] == "response.done":
                return str(event["type"])


def test_a_consumers_provider_key_is_injected_into_its_session(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[RealtimeProvider, int]
) -> None:
    """carol holds a gateway key and the catalog injects OpenAI's real one for her: her
    sessions reach the provider with the real key only (from the SDK's header and from a
    browser's subprotocol alike), and are billed to her. Before, the gateway key went
    upstream and the provider refused the session."""
    provider, port = upstream
    fake = {"name": PROVIDER, "flavor": "openai", "hosts": [f"127.0.0.1:{port}"]}
    inject = {"carol": {PROVIDER: "METERLINE_TEST_OPENAI_KEY"}}
    catalog = write_catalog(tmp_path / "catalog.yaml", [fake], {"carol": [KEYS["carol"]]}, inject)
    proxy = start_proxy(catalog=catalog)
    asyncio.run(session(proxy, port, ["client"], key=KEYS["carol"]))
    assert asyncio.run(browser_session(proxy, port, KEYS["carol"])) == "response.done"
    real = PROVIDER_KEYS["METERLINE_TEST_OPENAI_KEY"]
    for headers in provider.handshake_headers:
        assert headers["Authorization"] == f"Bearer {real}"
        assert KEYS["carol"] not in str(headers)
    assert provider.handshake_headers[1]["Sec-WebSocket-Protocol"] == "realtime"
    rows = wait_for_rows(proxy, 2)
    assert [(r["consumer"], r["key_fingerprint"]) for r in rows] == [
        ("carol", fingerprint(KEYS["carol"])), ("carol", fingerprint(KEYS["carol"]))
    ]  # fmt: skip


def test_an_upgrade_header_given_twice_is_checked_all_the_same(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[RealtimeProvider, int]
) -> None:
    """``Upgrade: websocket`` on two lines reads as ``websocket, websocket``; the server
    still upgrades. Before, only the exact value was taken for an upgrade: the session
    skipped its check (and key injection) and opened on a model the plan lacks."""
    provider, port = upstream
    proxy = start_proxy(catalog=capped_catalog(tmp_path, port, 0, "gpt-realtime-mini*", True))
    request = (
        f"GET http://127.0.0.1:{port}/v1/realtime?model={URL_MODEL} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Authorization: Bearer {KEYS['alice']}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as conn:
        conn.sendall(request.encode())
        status_line = conn.makefile("rb").readline()
    assert status_line.split()[1] == b"403", status_line
    assert provider.handshakes == 0


def test_events_sent_as_binary_frames_are_metered_too(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[RealtimeProvider, int]
) -> None:
    """A server that sends its JSON events as binary frames (the openai SDK decodes
    both): before, only text frames were read and such a session billed nothing."""
    provider, port = upstream
    provider.binary = True
    catalog = one_provider_catalog(
        tmp_path / "catalog.yaml", PROVIDER, port, {"alice": [KEYS["alice"]]}
    )
    proxy = start_proxy(catalog=catalog)
    asyncio.run(session(proxy, port, ["client", "server"]))
    rows = wait_for_rows(proxy, 3)
    responses = sorted((r for r in rows if r["response_id"]), key=lambda r: r["response_id"])
    assert [row_usage(r) for r in responses] == [billed(0), billed(1)]
    assert {r["model"] for r in responses} == {SESSION_MODEL}


async def out_of_band(proxy: MeterProxy, port: int, count: int) -> list[dict[str, Any]]:
    """``count`` out-of-band responses (``conversation: "none"``, at most 150 output
    tokens each) asked for together with the openai SDK, then a message that lets the
    provider answer; the events that ended each (``response.done`` or ``error``)."""
    client = openai.AsyncOpenAI(api_key=KEYS["alice"], base_url=f"http://127.0.0.1:{port}/v1")
    ends: list[dict[str, Any]] = []
    seen: set[str] = set()
    through: Any = {"proxy": proxy.url}
    async with client.realtime.connect(
        model=URL_MODEL, websocket_connection_options=through
    ) as conn:
        for _ in range(count):
            await conn.response.create(
                response={"conversation": "none", "max_output_tokens": 150}  # type: ignore[typeddict-item]
            )
        await conn.send({"type": "conversation.item.retrieve", "item_id": "go"})
        async for event in conn:
            if event.type == "error" or (
                event.type == "response.done" and event.response.id not in seen
            ):
                if event.type == "response.done":
                    seen.add(str(event.response.id))
                ends.append(event.model_dump())
                if len(ends) == count:
                    break
    await client.close()
    return ends


def test_out_of_band_responses_asked_for_together_each_hold_their_estimate(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[RealtimeProvider, int]
) -> None:
    """Ten out-of-band responses of at most 150 output tokens, asked for before any is
    answered, at a hard limit of 1,000: seven admitted (0 .. 900 held before each),
    three refused. Before, one estimate was held per session: all ten ran (4,000 tokens)."""
    provider, port = upstream
    provider.gated = True
    proxy = start_proxy(catalog=capped_catalog(tmp_path, port, 1000))
    ends = asyncio.run(asyncio.wait_for(out_of_band(proxy, port, 10), 30))
    assert [e["type"] for e in ends].count("error") == 3
    assert provider.received.count("response.create") == 7
    rows = wait_for_rows(proxy, 10)
    assert sorted(r["response_id"] for r in rows if not r["reason"]) == provider.served
    assert [r["reason"] for r in rows if r["reason"]] == ["limit:out"] * 3
