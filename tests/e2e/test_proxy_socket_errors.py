"""Provider errors and a stopping proxy on metered WebSockets with several turns.

The fake provider says what the client tells it to (a ``conversation.item.retrieve``
message carrying the events to send back), so each test scripts the exact order of
creates, announcements, errors and final events. Every hold must end with its turn: a
hold kept past its response refuses the consumer's other calls until the socket closes,
and one freed for the wrong turn lets calls past a hard limit.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import KEYS, ProxyFactory
from tests.e2e.test_proxy_responses_websocket import open_socket, wait_for_rows
from tests.support.aioserver import serve
from tests.support.governance import with_plan
from tests.support.proxy import MeterProxy, one_provider_catalog

PROVIDER = "fake-ws"
MODEL = "gpt-5-2025-08-07"
#: A hard limit of 1,000 output tokens and creates of at most 500: the limits admit a
#: create while what is used and held is below 1,000.
LIMIT, BOUND = 1000, 500
ERROR = {"type": "error", "status": 500,
         "error": {"type": "server_error", "code": "server_error", "message": "boom"}}  # fmt: skip


class ScriptedProvider:
    """Sends back the events each ``say`` message carries; records the client's
    creates (Responses and Realtime sockets alike)."""

    def __init__(self) -> None:
        self.creates: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        async for msg in ws:
            event = json.loads(msg.data)
            if event.get("type") == "response.create":
                self.creates.append(event.get("input") or event["response"]["instructions"])
            for out in event.get("say", ()):
                await ws.send_str(json.dumps(out))
        return ws


@pytest.fixture
def upstream() -> Iterator[tuple[ScriptedProvider, int]]:
    provider = ScriptedProvider()
    routes = {("GET", "/v1/responses"): provider.handle, ("GET", "/v1/realtime"): provider.handle}
    with serve(routes) as port:
        yield provider, port


def capped(tmp_path: Path, port: int, limit: int = LIMIT) -> Path:
    catalog = one_provider_catalog(
        tmp_path / "catalog.yaml", PROVIDER, port, {"alice": [KEYS["alice"]]}
    )
    meter = {"provider": PROVIDER, "token_types": ["output"]}
    features = [{"key": "out", "name": "Output", "meter": meter}]
    return with_plan(catalog, features, [{"feature": "out", "limit": limit}])


def say(*events: dict[str, Any]) -> dict[str, Any]:
    return {"type": "conversation.item.retrieve", "item_id": "x", "say": list(events)}


def create(name: str) -> dict[str, Any]:
    return {"type": "response.create", "model": "gpt-5", "input": name, "max_output_tokens": BOUND}


def created(rid: str) -> dict[str, Any]:
    response = {"id": rid, "object": "response", "status": "in_progress", "model": MODEL,
                "output": [], "usage": None}  # fmt: skip
    return {"type": "response.created", "response": response}


def completed(rid: str, kind: str = "response.completed") -> dict[str, Any]:
    usage = {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}
    response = {"id": rid, "object": "response", "status": "completed", "model": MODEL,
                "output": [], "usage": usage}  # fmt: skip
    return {"type": kind, "response": response}


async def drive(
    proxy: MeterProxy, port: int, steps: list[tuple[str, Any]], path: str = "/v1/responses"
) -> list[dict[str, Any]]:
    """``("send", message)`` or ``("recv", n)``; every message the client received."""
    got: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            f"http://127.0.0.1:{port}{path}",
            proxy=proxy.url,
            headers={"Authorization": f"Bearer {KEYS['alice']}"},
        ) as ws,
    ):
        for kind, arg in steps:
            if kind == "send":
                await ws.send_str(json.dumps(arg))
            else:
                for _ in range(arg):
                    got.append(json.loads((await ws.receive(timeout=10)).data))
    return got


def creates_forwarded(provider: ScriptedProvider, n: int) -> list[str]:
    """The creates the provider received once ``n`` did, and a moment after (one the
    proxy should have refused would follow them on the socket). The client hears a
    refusal from the proxy itself, so it may hear it before the provider has the create
    admitted just before it: asserted at once, the list was one short now and then."""
    deadline = time.monotonic() + 10
    while len(provider.creates) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    return list(provider.creates)


def test_an_error_after_a_response_started_frees_its_hold(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[ScriptedProvider, int]
) -> None:
    """r1 is announced, then the provider sends ``error`` and nothing more: r1 ends, not
    billed, its 500 no longer held, so c and d are both admitted after r2 (5 used).
    Before, r1's hold stayed for the socket's life and d was refused."""
    provider, port = upstream
    proxy = start_proxy(catalog=capped(tmp_path, port))
    steps = [("send", create("a")), ("send", say(created("r1"), ERROR)), ("recv", 2),
             ("send", create("b")), ("send", say(created("r2"), completed("r2"))), ("recv", 2),
             ("send", create("c")), ("send", create("d")),
             ("send", say(created("r3"), completed("r3"), created("r4"), completed("r4"))),
             ("recv", 4)]  # fmt: skip
    asyncio.run(drive(proxy, port, steps))
    assert provider.creates == ["a", "b", "c", "d"]
    rows = wait_for_rows(proxy, 3)
    assert sorted(r["response_id"] for r in rows) == ["r2", "r3", "r4"]  # r1 failed: not billed
    assert all(r["reason"] is None for r in rows)


def test_an_error_ends_the_response_under_way_not_the_create_queued_behind_it(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[ScriptedProvider, int]
) -> None:
    """a is under way (r1) with b queued behind it when the provider sends ``error``
    and ``response.failed`` for r1: r1's hold goes, b's stays (500 held), so c is
    admitted (1,000 held) and d refused. Before, the error freed b's hold: c and d were
    both admitted, 1,500 held at a limit of 1,000."""
    provider, port = upstream
    proxy = start_proxy(catalog=capped(tmp_path, port))
    failure = {"id": "r1", "status": "failed", "model": MODEL, "usage": None}
    failed = {"type": "response.failed", "response": failure}
    steps = [("send", create("a")), ("send", create("b")),
             ("send", say(created("r1"), ERROR, failed)), ("recv", 3),
             ("send", create("c")), ("send", create("d")), ("recv", 1)]  # fmt: skip
    got = asyncio.run(drive(proxy, port, steps))
    assert got[-1]["type"] == "error" and got[-1]["status"] == 429
    assert creates_forwarded(provider, 3) == ["a", "b", "c"]


def test_a_realtime_response_stopped_by_an_error_frees_its_hold(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[ScriptedProvider, int]
) -> None:
    """Realtime: r1 announced, then an ``error`` naming no client event and no
    ``response.done``: r1's hold goes, so c and d are both admitted after r2. Before, the
    next creates were refused for the rest of the session."""
    provider, port = upstream
    proxy = start_proxy(catalog=capped(tmp_path, port))

    def rt_create(name: str) -> dict[str, Any]:
        return {"type": "response.create",
                "response": {"instructions": name, "max_output_tokens": BOUND}}  # fmt: skip

    def rt(event: dict[str, Any]) -> dict[str, Any]:
        kind = {"response.completed": "response.done"}.get(event["type"], event["type"])
        return {**event, "type": kind}

    steps = [("send", rt_create("a")), ("send", say(rt(created("r1")), ERROR)), ("recv", 2),
             ("send", rt_create("b")), ("send", say(rt(created("r2")), rt(completed("r2")))),
             ("recv", 2), ("send", rt_create("c")), ("send", rt_create("d")),
             ("send", say(rt(created("r3")), rt(completed("r3")),
                          rt(created("r4")), rt(completed("r4")))), ("recv", 4)]  # fmt: skip
    asyncio.run(drive(proxy, port, steps, path="/v1/realtime?model=gpt-realtime"))
    assert provider.creates == ["a", "b", "c", "d"]
    rows = wait_for_rows(proxy, 3)
    assert sorted(r["response_id"] for r in rows) == ["r2", "r3", "r4"]


def test_a_response_under_way_when_the_proxy_stops_is_metered_as_cut(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[ScriptedProvider, int]
) -> None:
    """r0 completed, r1 announced with 1,400 characters of text, then the proxy stops:
    r1 is metered from its request and that text (estimated, status NULL), as when the
    client leaves. Before, it was not metered at all: every deploy under long-lived
    agent sockets lost the responses in progress."""
    provider, port = upstream
    proxy = start_proxy(catalog=capped(tmp_path, port, 100_000))
    delta = {"type": "response.output_text.delta", "item_id": "m", "output_index": 0,
             "content_index": 0, "delta": "otters " * 200}  # fmt: skip

    async def stop_mid_response() -> None:
        async with (
            aiohttp.ClientSession() as session,
            open_socket(session, proxy, port, KEYS["alice"]) as ws,
        ):
            for step in (create("z"), say(created("r0"), completed("r0")),
                         create("a"), say(created("r1"), delta)):  # fmt: skip
                await ws.send_str(json.dumps(step))
            for _ in range(4):
                await ws.receive(timeout=10)
            stopping = threading.Thread(target=proxy.stop)
            stopping.start()
            await asyncio.to_thread(stopping.join, 30)

    asyncio.run(stop_mid_response())
    rows = {r["response_id"]: r for r in proxy.events()}
    assert set(rows) == {"r0", "r1"}
    assert (rows["r0"]["output_tokens"], rows["r0"]["estimated"]) == (5, False)
    cut = rows["r1"]
    assert (cut["estimated"], cut["status"]) == (True, None)
    assert cut["output_tokens"] > 200


#: An error about another client message (an empty audio commit; a bad event type),
#: naming no client event: the response under way goes on, and keeps its hold.
STRAY = {"type": "error", "status": 400,
         "error": {"type": "invalid_request_error", "code": "input_audio_buffer_commit_empty",
                   "message": "buffer too small", "event_id": None}}  # fmt: skip


@pytest.mark.parametrize("kind", ["responses", "realtime"])
def test_an_error_about_another_message_leaves_the_response_under_way_its_hold(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[ScriptedProvider, int], kind: str
) -> None:
    """r1 under way (500 held), then an error that names nothing and is no server error:
    r1 runs on, so of b and c only b is admitted (1,000 held), and c is refused. Before,
    the error freed r1's hold and both were admitted, 1,500 at a limit of 1,000."""
    provider, port = upstream
    proxy = start_proxy(catalog=capped(tmp_path, port))
    realtime = kind == "realtime"

    def made(name: str) -> dict[str, Any]:
        if realtime:
            return {"type": "response.create",
                    "response": {"instructions": name, "max_output_tokens": BOUND}}  # fmt: skip
        return create(name)

    steps = [("send", made("a")), ("send", say(created("r1"), STRAY)), ("recv", 2),
             ("send", made("b")), ("send", made("c")), ("recv", 1)]  # fmt: skip
    path = "/v1/realtime?model=gpt-realtime" if realtime else "/v1/responses"
    got = asyncio.run(drive(proxy, port, steps, path=path))
    assert got[-1]["type"] == "error" and got[-1]["status"] == 429
    assert creates_forwarded(provider, 2) == ["a", "b"]


def test_a_final_event_after_the_error_that_ended_its_turn_takes_no_other_turn(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[ScriptedProvider, int]
) -> None:
    """a under way (r1) with b queued; a server error ends r1's turn, then r1's
    ``response.failed`` comes with usage after all: it is metered on its own, and b keeps
    its hold, so c is admitted and d refused. Before, r1's final event was metered on
    b's turn and freed b's hold: c and d were both admitted."""
    provider, port = upstream
    proxy = start_proxy(catalog=capped(tmp_path, port))
    failed = completed("r1", "response.failed")
    failed["response"]["status"] = "failed"
    steps = [("send", create("a")), ("send", create("b")),
             ("send", say(created("r1"), ERROR, failed)), ("recv", 3),
             ("send", create("c")), ("send", create("d")), ("recv", 1)]  # fmt: skip
    got = asyncio.run(drive(proxy, port, steps))
    assert got[-1]["type"] == "error" and got[-1]["status"] == 429
    assert creates_forwarded(provider, 3) == ["a", "b", "c"]
    rows = wait_for_rows(proxy, 2)
    assert {r["response_id"]: r["output_tokens"] for r in rows if r["response_id"]} == {"r1": 5}
    assert [r["reason"] for r in rows if r["reason"]] == ["limit:out"]
