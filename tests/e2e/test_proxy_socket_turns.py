"""Several responses under way on one metered WebSocket, through the real proxy.

A Responses socket answers creates first in first out per lane (``stream_id``), lanes
side by side, and a client may steer a response under way (``response.steer``: the
server ends it and starts a successor by itself); a Realtime session runs out-of-band
responses beside the conversation's. Each response is checked and holds its own
estimate until its final event. Before, a socket held one estimate at most: every new
create released the one before, so ten creates sent together, eight lanes, eight steers
or ten out-of-band responses all passed a hard limit of 1,000 output tokens (5,000,
4,000, 2,900 and 5,000 tokens served).

The fake providers answer nothing until the client's ``go`` message (which the proxy
forwards unchecked), so every create has passed the proxy's check before any response
ends: the admitted count is exact, not a race.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from tests.conftest import KEYS, ProxyFactory
from tests.e2e.test_proxy_responses_websocket import open_socket, wait_for_rows
from tests.support.aioserver import serve
from tests.support.governance import with_plan
from tests.support.proxy import one_provider_catalog

PROVIDER = "fake-ws"
MODEL = "gpt-5-2025-08-07"
LIMIT = 1000
#: Each create asks for at most this many output tokens: its hold. The limits admit a
#: turn while what is used and held is below the limit: 7 holds of 150 (0 .. 900 before).
BOUND = 150
ADMITTED = 7
OUTPUT = 500
GO = {"type": "conversation.item.retrieve", "item_id": "go"}


def usage(output: int = OUTPUT) -> dict[str, Any]:
    return {"input_tokens": 10, "output_tokens": output, "total_tokens": 10 + output}


class LanedProvider:
    """A fake Responses socket with lanes and steering. Creates are queued (per lane,
    first in first out) until ``go``, then answered lane by lane: ``response.created``,
    a text delta, ``response.completed``, each echoing the lane. With ``hold_open``,
    nothing after the deltas is sent (the client leaves mid-response). A steer is
    accepted, ends the response it names ``incomplete`` (``steered``) and starts its
    successor on the same lane, which waits for the next steer or ``go``."""

    def __init__(self) -> None:
        self.creates: list[dict[str, Any]] = []
        self.served: list[str] = []
        self.hold_open = False

    def _response(self, lane: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
        rid = f"resp_{len(self.served)}"
        self.served.append(rid)
        echo = {"stream_id": lane} if lane else {}
        body: dict[str, Any] = {"id": rid, "object": "response", "status": "in_progress",
                                "model": MODEL, "output": [], "usage": None}  # fmt: skip
        return body, echo

    async def _start(self, ws: web.WebSocketResponse, lane: str | None) -> tuple[dict, dict]:
        body, echo = self._response(lane)
        await ws.send_str(json.dumps({"type": "response.created", "response": body, **echo}))
        delta = {"type": "response.output_text.delta", "item_id": "m", "output_index": 0,
                 "content_index": 0, "delta": f"otters of {body['id']} " * 40, **echo}  # fmt: skip
        await ws.send_str(json.dumps(delta))
        return body, echo

    async def _end(self, ws: web.WebSocketResponse, body: dict, echo: dict, kind: str) -> None:
        status = "completed" if kind == "response.completed" else "incomplete"
        final = {**body, "status": status, "usage": usage()}
        if status == "incomplete":
            final["incomplete_details"] = {"reason": "steered"}
        await ws.send_str(json.dumps({"type": kind, "response": final, **echo}))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        queued: list[dict[str, Any]] = []
        running: tuple[dict, dict] | None = None
        async for msg in ws:
            event = json.loads(msg.data)
            kind = event.get("type")
            if kind == "response.create":
                self.creates.append(event)
                if running is None and not queued and event.get("input") == "steer me":
                    running = await self._start(ws, event.get("stream_id"))
                else:
                    queued.append(event)
            elif kind == "response.steer" and running is not None:
                body, echo = running
                steer = {"id": f"steer_{body['id']}", "previous_response_id": body["id"]}
                accepted = {"type": "response.steer.accepted", "sequence_number": 0}
                await ws.send_str(json.dumps({**accepted, "steer": steer, **echo}))
                await self._end(ws, body, echo, "response.incomplete")
                running = await self._start(ws, echo.get("stream_id"))
            elif kind == "conversation.item.retrieve":  # go
                if running is not None:
                    await self._end(ws, *running, "response.completed")
                    running = None
                for create in queued:
                    body, echo = await self._start(ws, create.get("stream_id"))
                    if not self.hold_open:
                        await self._end(ws, body, echo, "response.completed")
                queued.clear()
        return ws


@pytest.fixture
def upstream() -> Iterator[tuple[LanedProvider, int]]:
    provider = LanedProvider()
    with serve({("GET", "/v1/responses"): provider.handle}) as port:
        yield provider, port


def capped(tmp_path: Path, port: int) -> Path:
    catalog = one_provider_catalog(
        tmp_path / "catalog.yaml", PROVIDER, port, {"alice": [KEYS["alice"]]}
    )
    meter = {"provider": PROVIDER, "token_types": ["output"]}
    features = [{"key": "out", "name": "Output", "meter": meter}]
    return with_plan(catalog, features, [{"feature": "out", "limit": LIMIT}])


def create(i: int, lane: str | None = None) -> dict[str, Any]:
    made = {"type": "response.create", "model": "gpt-5", "input": f"turn {i}",
            "max_output_tokens": BOUND}  # fmt: skip
    return {**made, "stream_id": lane} if lane else made


async def together(proxy: Any, port: int, creates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send every create at once, then ``go``; the events that ended each (the
    completions and the proxy's refusals)."""
    ends: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession() as session,
        open_socket(session, proxy, port, KEYS["alice"]) as ws,
    ):
        for made in creates:
            await ws.send_str(json.dumps(made))
        await ws.send_str(json.dumps(GO))
        while len(ends) < len(creates):
            event = json.loads((await ws.receive(timeout=10)).data)
            if event["type"] in ("response.completed", "error"):
                ends.append(event)
    return ends


def test_creates_sent_together_each_hold_their_estimate(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[LanedProvider, int]
) -> None:
    """Ten creates of at most 150 output tokens, sent before any is answered, at a hard
    limit of 1,000: seven are admitted (0 .. 900 held before each), three refused on the
    socket; each admitted response is one event with its own id."""
    provider, port = upstream
    proxy = start_proxy(catalog=capped(tmp_path, port))
    ends = asyncio.run(together(proxy, port, [create(i) for i in range(10)]))
    assert [e["type"] for e in ends].count("error") == 10 - ADMITTED
    assert len(provider.creates) == ADMITTED
    rows = wait_for_rows(proxy, 10)
    billed = sorted(r["response_id"] for r in rows if not r["reason"])
    assert billed == sorted(provider.served) and len(billed) == ADMITTED
    assert [r["reason"] for r in rows if r["reason"]] == ["limit:out"] * (10 - ADMITTED)
    assert {r["output_tokens"] for r in rows if not r["reason"]} == {OUTPUT}


async def sdk_lanes(proxy: Any, port: int, lanes: int) -> list[Any]:
    """The openai SDK's ``responses.connect()``: one create per lane, then ``go``; the
    event that ended each lane."""
    client = openai.AsyncOpenAI(api_key=KEYS["alice"], base_url=f"http://127.0.0.1:{port}/v1")
    ends: list[Any] = []
    through: Any = {"proxy": proxy.url}
    async with client.responses.connect(websocket_connection_options=through) as conn:
        for i in range(lanes):
            await conn.response.create(
                model="gpt-5", input=f"lane {i}", max_output_tokens=BOUND, stream_id=f"lane{i}"
            )
        await conn.send(GO)  # type: ignore[arg-type]
        async for event in conn:
            if event.type in ("response.completed", "error"):
                ends.append(event)
                if len(ends) == lanes:
                    break
    await client.close()
    return ends


def test_each_lane_of_a_socket_holds_its_own_estimate(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[LanedProvider, int]
) -> None:
    """Eight lanes (``stream_id``) opened by the openai SDK at a hard limit of 1,000:
    seven admitted, the eighth refused with an ``error`` event on its own lane."""
    provider, port = upstream
    proxy = start_proxy(catalog=capped(tmp_path, port))
    ends = asyncio.run(asyncio.wait_for(sdk_lanes(proxy, port, 8), 30))
    errors = [e for e in ends if e.type == "error"]
    assert len(errors) == 1 and errors[0].stream_id == "lane7"
    assert [c["stream_id"] for c in provider.creates] == [f"lane{i}" for i in range(ADMITTED)]
    rows = wait_for_rows(proxy, 8)
    assert sorted(r["response_id"] for r in rows if not r["reason"]) == sorted(provider.served)


def test_lanes_cut_by_the_client_are_each_estimated_from_their_own_text(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[LanedProvider, int]
) -> None:
    """Four lanes each started and sent its text, then the client left: four estimated
    events, one per response, each from its own text. Before, one event held the text
    of all four lanes and the other three were not metered."""
    provider, port = upstream
    provider.hold_open = True
    proxy = start_proxy(catalog=capped(tmp_path, port))

    async def leave() -> None:
        async with (
            aiohttp.ClientSession() as session,
            open_socket(session, proxy, port, KEYS["alice"]) as ws,
        ):
            for i in range(4):
                await ws.send_str(json.dumps(create(i, f"lane{i}")))
            await ws.send_str(json.dumps(GO))
            deltas = 0
            while deltas < 4:
                deltas += json.loads((await ws.receive(timeout=10)).data)["type"].endswith("delta")

    asyncio.run(leave())
    rows = wait_for_rows(proxy, 4)
    assert sorted(r["response_id"] for r in rows) == sorted(provider.served)
    for row in rows:
        assert (row["estimated"], row["status"]) == (True, None)
    assert len({r["output_tokens"] for r in rows}) == 1  # the same text length in each lane
    assert rows[0]["output_tokens"] < 2 * 40 * 5  # one lane's text, not four


async def steer_on(proxy: Any, port: int, steers: int) -> list[str]:
    """One create, then a steer of each response as it starts (the SDK's
    ``response.steer``), until a steer is refused; then ``go``. Every event type seen."""
    client = openai.AsyncOpenAI(api_key=KEYS["alice"], base_url=f"http://127.0.0.1:{port}/v1")
    seen: list[str] = []
    through: Any = {"proxy": proxy.url}
    async with client.responses.connect(websocket_connection_options=through) as conn:
        await conn.response.create(model="gpt-5", input="steer me", max_output_tokens=BOUND)
        left = steers
        async for event in conn:
            seen.append(event.type)
            if event.type == "response.created" and left:
                left -= 1
                await conn.response.steer(input="and more", previous_response_id=event.response.id)
            elif event.type == "error":
                await conn.send(GO)  # type: ignore[arg-type]
            elif event.type == "response.completed":
                break
    await client.close()
    return seen


def test_a_steer_is_checked_as_a_turn(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[LanedProvider, int]
) -> None:
    """Each steer starts a successor response (500 output tokens each, as the steered
    one): the steers are checked with the steered response's bound. At a hard limit of
    1,000: the first response and two successors run; the third steer is refused
    (``error``), so the last successor completes and nothing more starts."""
    provider, port = upstream
    proxy = start_proxy(catalog=capped(tmp_path, port))
    seen = asyncio.run(asyncio.wait_for(steer_on(proxy, port, 8), 30))
    assert seen.count("response.created") == 3 and seen.count("error") == 1
    rows = wait_for_rows(proxy, 4)
    assert sorted(r["response_id"] for r in rows if not r["reason"]) == provider.served
    assert [r["reason"] for r in rows if r["reason"]] == ["limit:out"]
