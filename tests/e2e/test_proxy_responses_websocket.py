"""The Responses API's WebSocket mode (``GET /v1/responses`` upgraded; the openai SDK's
``responses.connect()``, openai-agents, xAI) through the real proxy.

Each turn is a ``response.create`` message, answered by the events of a Responses
stream ending in ``response.completed`` with the response's usage. Before, the socket
passed through unmetered: 3 turns of 1,500 tokens each were stored as no event at all.
Now each response is one event with the provider's figures, attributed to the key of
the upgrade; ``meter_unknown_keys=reject`` still refuses a stranger's upgrade.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import KEYS, UNKNOWN_KEY, ProxyFactory
from tests.support.aioserver import serve
from tests.support.governance import with_plan
from tests.support.proxy import USAGE_COLUMNS, MeterProxy, one_provider_catalog, row_usage

PROVIDER = "fake-ws"
TURNS = 3
MODEL = "gpt-5-2025-08-07"


def turn_usage(turn: int) -> dict[str, Any]:
    """The provider's usage for turn ``turn`` (each turn's own figures)."""
    return {
        "input_tokens": 1000 + turn,
        "input_tokens_details": {"cached_tokens": 200},
        "output_tokens": 500 + turn,
        "output_tokens_details": {"reasoning_tokens": 100},
        "total_tokens": 1500 + 2 * turn,
    }


def billed(turn: int) -> dict[str, int]:
    """``turn_usage(turn)`` in the token model: input excludes the cached share."""
    zero = dict.fromkeys(USAGE_COLUMNS, 0)
    return {**zero, "input": 800 + turn, "cached_input": 200, "output": 500 + turn,
            "reasoning": 100}  # fmt: skip


class WebSocketProvider:
    """A fake Responses API that speaks WebSocket mode on ``GET /v1/responses``."""

    def __init__(self) -> None:
        self.handshakes = 0
        self.served: list[str] = []
        self.fail_next = False
        """Answer the next turn with an ``error`` event, as for an unknown
        ``previous_response_id``."""
        self.deep_turns = 0
        """End this many next turns with a final event nested too deeply to read."""
        self.stall = False
        """Send a turn's first events, then nothing more (the client leaves mid-turn)."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.handshakes += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            event = json.loads(msg.data)
            if event.get("type") != "response.create":
                continue
            if self.fail_next:
                self.fail_next = False
                error = {"type": "invalid_request_error", "code": "previous_response_not_found",
                         "message": "Previous response not found.", "param": None}  # fmt: skip
                await ws.send_str(json.dumps({"type": "error", "status": 400, "error": error}))
                continue
            if self.deep_turns:
                self.deep_turns -= 1
                usage = {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}
                head = json.dumps({"id": "resp_deep", "status": "completed", "usage": usage})
                deep = "[" * 100_000 + "]" * 100_000
                await ws.send_str(
                    '{"type": "response.completed", "response": ' + head[:-1] + f', "x": {deep}}}}}'
                )
                continue
            turn = len(self.served)
            rid = f"resp_ws_{turn:04d}"
            self.served.append(rid)
            response = {"id": rid, "object": "response", "created_at": 1_700_000_000,
                        "status": "in_progress", "model": MODEL, "output": [],
                        "usage": None}  # fmt: skip
            text = [{"type": "output_text", "text": "Otters.", "annotations": []}]
            done = {**response, "status": "completed", "usage": turn_usage(turn),
                    "output": [{"type": "message", "id": "msg_1", "status": "completed",
                                "role": "assistant", "content": text}]}  # fmt: skip
            events: list[dict[str, Any]] = [
                {"type": "response.created", "response": response},
                # A text that names the final event is not one.
                {
                    "type": "response.output_text.delta",
                    "item_id": "msg_1",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": 'no "response.completed" here',
                },
                {"type": "response.completed", "response": done},
            ]
            for i, out in enumerate(events[:2] if self.stall else events):
                await ws.send_str(json.dumps({**out, "sequence_number": i}))
        return ws


def open_socket(session: aiohttp.ClientSession, proxy: MeterProxy, port: int, key: str) -> Any:
    """A Responses WebSocket through the proxy (messages of any size)."""
    return session.ws_connect(
        f"http://127.0.0.1:{port}/v1/responses",
        proxy=proxy.url,
        headers={"Authorization": f"Bearer {key}"},
        max_msg_size=0,
    )


async def held_then_another_socket(
    proxy: MeterProxy, port: int, turns: int
) -> tuple[list[str], list[dict[str, Any]]]:
    """alice's ``turns`` turns asking for 150 output tokens on one socket (the first
    message answering each, raw), then one turn on a second socket while the first stays
    open: it is admitted only if the first socket's turns hold nothing any more."""
    create = {"type": "response.create", "model": "gpt-5", "input": "x",
              "max_output_tokens": 150}  # fmt: skip
    answers: list[str] = []
    async with (
        aiohttp.ClientSession() as session,
        open_socket(session, proxy, port, KEYS["alice"]) as ws,
    ):
        for _ in range(turns):
            await ws.send_str(json.dumps(create))
            answers.append((await ws.receive()).data)
        return answers, await converse(proxy, port, KEYS["alice"], 1)


async def converse(proxy: MeterProxy, port: int, key: str, turns: int) -> list[dict[str, Any]]:
    """Open the socket through the proxy, run ``turns`` turns (each may write up to 150
    tokens); the event that ended each (``response.completed`` or ``error``)."""
    finals: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session, open_socket(session, proxy, port, key) as ws:
        for turn in range(turns):
            await ws.send_str(
                json.dumps(
                    {
                        "type": "response.create",
                        "model": "gpt-5",
                        "input": f"turn {turn}",
                        "max_output_tokens": 150,
                    }
                )  # fmt: skip
            )
            finals.append(await turn_end(ws))
    return finals


async def turn_end(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The event that ends the turn in progress (``response.completed`` or ``error``)."""
    async for msg in ws:
        event = json.loads(msg.data)
        if event["type"] in ("response.completed", "error"):
            return event
    raise AssertionError("the socket closed mid-turn")


def wait_for_rows(proxy: MeterProxy, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    rows = proxy.events()
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(0.05)
        rows = proxy.events()
    return rows


def capped_catalog(tmp_path: Path, port: int, limit: int) -> Path:
    """alice, of customer acme, on a plan with a hard limit of ``limit`` output tokens."""
    catalog = one_provider_catalog(
        tmp_path / "catalog.yaml", PROVIDER, port, {"alice": [KEYS["alice"]]}
    )
    meter = {"provider": PROVIDER, "token_types": ["output"]}
    features = [{"key": "out", "name": "Output", "meter": meter}]
    return with_plan(catalog, features, [{"feature": "out", "limit": limit}])


@pytest.fixture
def upstream() -> Any:
    provider = WebSocketProvider()
    with serve({("GET", "/v1/responses"): provider.handle}) as port:
        yield provider, port


def test_each_response_on_a_responses_websocket_is_one_event(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[WebSocketProvider, int]
) -> None:
    provider, port = upstream
    catalog = one_provider_catalog(
        tmp_path / "catalog.yaml", PROVIDER, port, {"alice": [KEYS["alice"]]}
    )
    proxy = start_proxy(catalog=catalog)
    finals = asyncio.run(converse(proxy, port, KEYS["alice"], TURNS))
    assert [f["response"]["usage"] for f in finals] == [turn_usage(t) for t in range(TURNS)]

    rows = sorted(wait_for_rows(proxy, TURNS), key=lambda r: r["response_id"])
    assert [r["response_id"] for r in rows] == provider.served
    assert [row_usage(r) for r in rows] == [billed(t) for t in range(TURNS)]
    for row in rows:
        assert row["consumer"] == "alice"
        assert row["provider"] == PROVIDER
        assert row["model"] == MODEL
        assert row["path"] == "/v1/responses"
        assert row["streamed"] is True
        assert row["estimated"] is False
        assert row["status"] == 200


def test_reject_refuses_a_strangers_responses_websocket(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[WebSocketProvider, int]
) -> None:
    provider, port = upstream
    catalog = one_provider_catalog(
        tmp_path / "catalog.yaml", PROVIDER, port, {"alice": [KEYS["alice"]]}
    )
    proxy = start_proxy(catalog=catalog, options={"meter_unknown_keys": "reject"})
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        asyncio.run(converse(proxy, port, UNKNOWN_KEY, 1))
    assert refused.value.status == 401
    assert provider.handshakes == 0

    asyncio.run(converse(proxy, port, KEYS["alice"], 1))  # a known key goes through
    rows = wait_for_rows(proxy, 1)
    assert [(r["consumer"], r["response_id"]) for r in rows] == [("alice", "resp_ws_0000")]


def test_a_turn_past_a_hard_limit_is_refused_on_the_socket(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[WebSocketProvider, int]
) -> None:
    """A hard limit of 1,000 output tokens: two turns use 1,001, the third is refused
    before the provider sees it (an ``error`` event; the socket stays open) and stored
    with its reason. Before, every turn went through, ungoverned and unmetered."""
    provider, port = upstream
    catalog = capped_catalog(tmp_path, port, 1000)
    proxy = start_proxy(catalog=catalog)
    ended = asyncio.run(converse(proxy, port, KEYS["alice"], TURNS))
    assert [e["type"] for e in ended] == ["response.completed", "response.completed", "error"]
    assert ended[2]["status"] == 429
    assert ended[2]["error"]["message"]
    assert len(provider.served) == 2

    rows = wait_for_rows(proxy, TURNS)
    metered = sorted((r for r in rows if r["reason"] is None), key=lambda r: r["response_id"])
    assert [row_usage(r) for r in metered] == [billed(0), billed(1)]
    [refused] = [r for r in rows if r["reason"] is not None]
    assert refused["reason"].startswith("limit:")
    assert (refused["consumer"], refused["status"], refused["output_tokens"]) == ("alice", 429, 0)


def test_a_turn_answered_with_an_error_frees_its_hold_while_the_socket_stays_open(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[WebSocketProvider, int]
) -> None:
    """A limit of 150 output tokens; a turn asking for 150 is answered with ``error`` on
    a socket that stays open. Before, its hold of 150 stayed until the socket closed, so
    the consumer's turn on a second socket was refused as held by calls in flight."""
    provider, port = upstream
    catalog = capped_catalog(tmp_path, port, 150)
    proxy = start_proxy(catalog=catalog)
    provider.fail_next = True
    answers, second = asyncio.run(held_then_another_socket(proxy, port, 1))
    first = [json.loads(a) for a in answers]
    assert [e["type"] for e in first] == ["error"] and first[0]["status"] == 400
    assert [e["type"] for e in second] == ["response.completed"], second
    assert provider.served == ["resp_ws_0000"]


def test_an_unreadable_final_event_is_estimated_and_frees_its_hold(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[WebSocketProvider, int]
) -> None:
    """A ``response.completed`` nested too deeply to read: before, nothing was stored,
    nothing logged, and the turn's hold stayed until the socket closed (the consumer's
    turn on a second socket was refused). Now it is one estimated event, as a garbled
    HTTP body is, and the hold is freed; the problem is logged once, not per turn."""
    provider, port = upstream
    proxy = start_proxy(catalog=capped_catalog(tmp_path, port, 150))
    provider.deep_turns = 2
    answers, second = asyncio.run(held_then_another_socket(proxy, port, 2))
    first = answers[-1][:40]
    assert first.startswith('{"type": "response.completed"')
    assert [e["type"] for e in second] == ["response.completed"], second
    rows = wait_for_rows(proxy, 3)
    estimated = [r for r in rows if r["response_id"] != "resp_ws_0000"]
    assert len(estimated) == 2
    for row in estimated:
        assert row["estimated"] is True and row["consumer"] == "alice"
        assert row["input_tokens"] > 0 and row["reason"] is None
    assert proxy.log_text().count("unreadable final event") == 1


async def leave_mid_turn(proxy: MeterProxy, port: int, key: str) -> list[str]:
    """A turn whose socket the client closes after the turn's first two events."""
    create = {"type": "response.create", "model": "gpt-5",
              "input": "Tell me a long story about otters. " * 20}  # fmt: skip
    async with aiohttp.ClientSession() as session, open_socket(session, proxy, port, key) as ws:
        await ws.send_str(json.dumps(create))
        return [json.loads((await ws.receive()).data)["type"] for _ in range(2)]


def test_a_turn_cut_by_the_client_is_estimated_as_a_cut_stream_is(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[WebSocketProvider, int]
) -> None:
    """The client closes the socket after the response started: the provider had the
    request and answered part of it. Before, nothing was stored (the turn was billed
    nothing); now it is one event estimated from the request and the text seen, with
    ``status`` NULL and the response's id and model, as a cut HTTP stream is."""
    provider, port = upstream
    catalog = one_provider_catalog(
        tmp_path / "catalog.yaml", PROVIDER, port, {"alice": [KEYS["alice"]]}
    )
    proxy = start_proxy(catalog=catalog)
    provider.stall = True
    seen = asyncio.run(leave_mid_turn(proxy, port, KEYS["alice"]))
    assert seen == ["response.created", "response.output_text.delta"]
    [row] = wait_for_rows(proxy, 1)
    assert (row["consumer"], row["response_id"], row["model"]) == ("alice", "resp_ws_0000", MODEL)
    assert (row["estimated"], row["status"], row["reason"]) == (True, None, None)
    assert 100 < row["input_tokens"] < 400  # ~160 tokens asked
    assert 3 <= row["output_tokens"] <= 10  # 'no "response.completed" here'


async def disguised_creates(proxy: MeterProxy, port: int, key: str) -> list[dict[str, Any]]:
    """Two plain turns, then on the same socket a ``response.create`` whose type is
    escaped and one sent as a binary frame (the provider reads both as creates): the
    event that ended each turn."""
    create = json.dumps({"type": "response.create", "model": "gpt-5", "input": "x"})
    escaped = create.replace("response.create", "response\\u002ecreate")
    answers = []
    async with aiohttp.ClientSession() as session, open_socket(session, proxy, port, key) as ws:
        for send in (ws.send_str, ws.send_str, ws.send_str, ws.send_bytes):
            message: Any = [create, create, escaped, create.encode()][len(answers)]
            await send(message)
            answers.append(await turn_end(ws))
    return answers


def test_a_disguised_create_past_a_hard_limit_is_refused_too(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[WebSocketProvider, int]
) -> None:
    """Past the limit, a create written ``"response\\u002ecreate"`` or sent as a binary
    frame is refused like a plain one. Before, only the bytes ``"response.create"`` in a
    text frame were checked: both reached the provider, 4 turns served against a cap of 1,000."""
    provider, port = upstream
    proxy = start_proxy(catalog=capped_catalog(tmp_path, port, 1000))
    answers = asyncio.run(disguised_creates(proxy, port, KEYS["alice"]))
    assert [(a["type"], a.get("status")) for a in answers] == [
        ("response.completed", None), ("response.completed", None), ("error", 429),
        ("error", 429),
    ]  # fmt: skip
    assert len(provider.served) == 2
    rows = wait_for_rows(proxy, 4)
    assert sorted(str(r["reason"]) for r in rows) == ["None", "None", "limit:out", "limit:out"]


def test_a_turn_the_provider_refuses_is_not_billed(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[WebSocketProvider, int]
) -> None:
    """The provider answers a turn with an ``error`` event (an unknown
    ``previous_response_id``) and the client leaves. Before, for a consumer without
    limits, the turn stayed open and was stored as a cut turn: an estimated event for
    a call the provider never ran. Now nothing is stored for it."""
    provider, port = upstream
    catalog = one_provider_catalog(
        tmp_path / "catalog.yaml", PROVIDER, port, {"alice": [KEYS["alice"]]}
    )
    proxy = start_proxy(catalog=catalog)
    provider.fail_next = True
    [refused] = asyncio.run(converse(proxy, port, KEYS["alice"], 1))
    assert refused["type"] == "error"
    asyncio.run(converse(proxy, port, KEYS["alice"], 1))
    [row] = wait_for_rows(proxy, 1)
    assert (row["response_id"], row["estimated"]) == ("resp_ws_0000", False)
    assert len(wait_for_rows(proxy, 2, timeout=1.0)) == 1
