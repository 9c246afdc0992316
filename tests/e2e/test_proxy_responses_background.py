"""OpenAI Responses API background mode through the real proxy, with the openai SDK.

A ``background: true`` POST answers ``status: "queued"`` with ``usage: null``; the usage
comes on the response once it ends, read by polling ``GET /v1/responses/<id>``, by a
resumed stream (``?stream=true&starting_after=N``) or by a cancel. Before, the POST was
stored as a guess (1 input token) and the reads passed unmetered. Now the response is
billed once, with the provider's figures, whichever read shows its end and however many
reads (and proxies, and restarts) there are. Also ``POST /v1/responses/compact``, and the
one-line notice for billed paths the proxy does not meter.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx2
import openai
import pytest
from aiohttp import web

from tests.conftest import KEYS, ProxyFactory
from tests.support.aioserver import serve
from tests.support.clients import post_via
from tests.support.governance import with_plan
from tests.support.proxy import MeterProxy, write_catalog

PROVIDER = "fake-bg"
USAGE = {
    "input_tokens": 1500,
    "input_tokens_details": {"cached_tokens": 1024},
    "output_tokens": 600,
    "output_tokens_details": {"reasoning_tokens": 448},
    "total_tokens": 2100,
}
BILLED = {"input_tokens": 476, "cached_input_tokens": 1024, "output_tokens": 600,
          "reasoning_tokens": 448}  # fmt: skip
CANCELLED_USAGE = {"input_tokens": 1500, "output_tokens": 40, "total_tokens": 1540}
POLLS_IN_PROGRESS = 2
CREATED_AT = int(time.time()) - 3600
"""An hour before the run: a ``created_at`` the proxy takes as the event's ts (not one
older than the provider keeps a response, nor one ahead of the read)."""
ABSENT = "absent"


class Upstream:
    """Responses held by the fake provider: id -> (created_at, background, polls left)."""

    def __init__(self) -> None:
        self.responses: dict[str, list[Any]] = {}

    def new(self, background: bool) -> str:
        rid = f"resp_{len(self.responses) + 1:04d}{'bg' if background else 'fg'}"
        self.responses[rid] = [CREATED_AT + len(self.responses), background, POLLS_IN_PROGRESS]
        return rid

    def body(self, rid: str, status: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
        created_at, background, _ = self.responses[rid]
        ended = status not in ("queued", "in_progress")
        text = [{"type": "output_text", "text": "Otters.", "annotations": []}]
        body = {
            "id": rid, "object": "response", "created_at": created_at, "status": status,
            "background": background, "completed_at": None,
            "error": None, "model": "o4-mini-2025-04-16", "store": True,
            "output": [{"type": "message", "id": "msg_1", "status": "completed",
                        "role": "assistant", "content": text}] if ended else [],
            "usage": (usage or USAGE) if ended else None,
        }  # fmt: skip
        if ended and type(created_at) is int:
            body["completed_at"] = created_at + 30
        if created_at == ABSENT:
            del body["created_at"]
        return body

    def events(self, rid: str) -> list[dict[str, Any]]:
        """The whole stream of a response, numbered from 0."""
        kinds = [("response.created", "queued"), ("response.in_progress", "in_progress")]
        out: list[dict[str, Any]] = [
            {"type": kind, "response": self.body(rid, status)} for kind, status in kinds
        ]
        for word in ("Ot", "ters", "."):
            out.append({"type": "response.output_text.delta", "item_id": "msg_1",
                        "output_index": 0, "content_index": 0, "delta": word})  # fmt: skip
        out.append({"type": "response.completed", "response": self.body(rid, "completed")})
        return [{**event, "sequence_number": i} for i, event in enumerate(out)]

    async def stream(
        self, request: web.Request, rid: str, after: int, pause: float = 0.0
    ) -> web.StreamResponse:
        """The events after ``after``; ``pause`` seconds between them from the third on
        (a model at work: a client that drops the stream leaves before the end)."""
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for event in self.events(rid)[after + 1 :]:
            if event["sequence_number"] > 2:
                await asyncio.sleep(pause)
            data = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
            try:
                await resp.write(data.encode())
            except ConnectionError:  # the client dropped the stream
                return resp
        await resp.write_eof()
        return resp

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if request.method == "POST" and path.endswith("/responses/compact"):
            compacted = {"id": "resp_cmp_1", "object": "response.compaction",
                         "created_at": CREATED_AT, "output": [], "usage": USAGE}  # fmt: skip
            return web.json_response(compacted)
        if request.method == "POST" and path.endswith("/responses"):
            body = await request.json()
            rid = self.new(bool(body.get("background")))
            if body.get("stream"):
                return await self.stream(request, rid, -1, pause=0.3)
            if body.get("background"):
                return web.json_response(self.body(rid, "queued"))
            return web.json_response(self.body(rid, "completed"))
        m = re.search(r"/responses/(resp_\w+)(/input_items|/cancel)?$", path)
        if m is None or m.group(1) not in self.responses:
            return web.json_response({"error": {"message": "not found"}}, status=404)
        rid, sub = m.group(1), m.group(2)
        if sub == "/input_items":
            return web.json_response({"object": "list", "data": [], "has_more": False})
        if sub == "/cancel":
            return web.json_response(self.body(rid, "cancelled", CANCELLED_USAGE))
        if request.query.get("stream") == "true":
            return await self.stream(request, rid, int(request.query.get("starting_after", -1)))
        state = self.responses[rid]
        if state[2] > 0:
            state[2] -= 1
            return web.json_response(self.body(rid, "in_progress"))
        return web.json_response(self.body(rid, "completed"))


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[Upstream, int]]:
    fake = Upstream()
    with serve({("*", "/{tail:.*}"): fake.handle}) as port:
        yield fake, port


@pytest.fixture
def catalog(tmp_path: Path, upstream: tuple[Upstream, int]) -> Path:
    provider = {"name": PROVIDER, "flavor": "openai", "hosts": [f"127.0.0.1:{upstream[1]}"]}
    gemini = {
        "name": "fake-gemini-bg",
        "flavor": "gemini",
        "hosts": [f"localhost.test:{upstream[1]}"],
    }
    return write_catalog(tmp_path / "catalog.yaml", [provider, gemini], {"alice": [KEYS["alice"]]})


def _client(proxy: MeterProxy, port: int, prefix: str = "/v1") -> openai.OpenAI:
    return openai.OpenAI(
        api_key=KEYS["alice"],
        base_url=f"http://127.0.0.1:{port}{prefix}",
        http_client=openai.DefaultHttpxClient(proxy=proxy.url),
        max_retries=0,
    )


def _settled(proxy: MeterProxy, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The stored events once ``count`` arrived and a few flushes added nothing more."""
    deadline = time.monotonic() + timeout
    rows = proxy.events()
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(0.05)
        rows = proxy.events()
    time.sleep(0.6)  # flushes every 0.1 s: a second copy would be stored by now
    return proxy.events()


def _poll_to_the_end(client: openai.OpenAI, rid: str) -> Any:
    resp = client.responses.retrieve(rid)
    while resp.status in ("queued", "in_progress"):
        resp = client.responses.retrieve(rid)
    return resp


def _check_billed(row: dict[str, Any], rid: str, fake: Upstream) -> None:
    """The event of background response ``rid``: the provider's figures, named after it,
    at its ``created_at`` (the same event whichever read made it)."""
    assert row["event_id"] == f"response:{PROVIDER}:{rid}"
    assert (row["consumer"], row["provider"], row["method"]) == ("alice", PROVIDER, "GET")
    assert {k: row[k] for k in BILLED} == BILLED
    assert (row["estimated"], row["status"], row["response_id"]) == (False, 200, rid)
    created_at = datetime.fromtimestamp(fake.responses[rid][0], UTC)
    assert row["ts"] == created_at.replace(tzinfo=None)


@pytest.mark.parametrize("prefix", ["/v1", "/openai/v1"], ids=["openai", "azure-v1"])
def test_a_background_response_polled_many_times_is_billed_once(
    start_proxy: ProxyFactory, upstream: tuple[Upstream, int], catalog: Path, prefix: str
) -> None:
    proxy = start_proxy(catalog=catalog)
    with _client(proxy, upstream[1], prefix) as client:
        queued = client.responses.create(model="o4-mini", input="otters", background=True)
        assert (queued.status, queued.usage) == ("queued", None)
        done = _poll_to_the_end(client, queued.id)
        assert done.status == "completed" and done.usage is not None
        for _ in range(3):
            assert client.responses.retrieve(queued.id).usage == done.usage
        client.responses.input_items.list(queued.id)
    [row] = _settled(proxy, 1)  # no guess for the POST, nothing for the polls before the end
    _check_billed(row, queued.id, upstream[0])
    assert row["path"] == f"{prefix}/responses/{queued.id}"


def test_an_azure_read_with_an_api_version_is_billed(
    start_proxy: ProxyFactory, upstream: tuple[Upstream, int], catalog: Path
) -> None:
    proxy = start_proxy(catalog=catalog)
    with _client(proxy, upstream[1], "/openai") as client:
        queued = client.responses.create(model="o4-mini", input="otters", background=True)
        query = {"api-version": "2025-04-01-preview"}
        resp = client.responses.retrieve(queued.id, extra_query=query)
        while resp.status != "completed":
            resp = client.responses.retrieve(queued.id, extra_query=query)
    [row] = _settled(proxy, 1)
    _check_billed(row, queued.id, upstream[0])


def test_a_resumed_background_stream_is_billed_once_from_its_final_event(
    start_proxy: ProxyFactory, upstream: tuple[Upstream, int], catalog: Path
) -> None:
    proxy = start_proxy(catalog=catalog)
    with _client(proxy, upstream[1]) as client:
        stream = client.responses.create(
            model="o4-mini", input="otters", background=True, stream=True
        )
        rid, last = "", -1
        for event in stream:
            last = event.sequence_number
            if event.type == "response.created":
                rid = event.response.id
            if last >= 2:
                break  # the client drops the stream: the provider goes on
        stream.close()
        assert rid
        resumed = client.responses.retrieve(rid, stream=True, starting_after=last)
        final = [e for e in resumed if e.type == "response.completed"]
        assert final and final[0].response.usage is not None
        _poll_to_the_end(client, rid)  # read once more, as JSON
    [row] = _settled(proxy, 1)
    _check_billed(row, rid, upstream[0])
    assert row["streamed"] is True


def test_a_cancelled_background_response_is_billed_what_it_used(
    start_proxy: ProxyFactory, upstream: tuple[Upstream, int], catalog: Path
) -> None:
    proxy = start_proxy(catalog=catalog)
    with _client(proxy, upstream[1]) as client:
        queued = client.responses.create(model="o4-mini", input="otters", background=True)
        assert client.responses.cancel(queued.id).status == "cancelled"
        client.responses.cancel(queued.id)  # idempotent: the same response again
    [row] = _settled(proxy, 1)
    assert row["event_id"] == f"response:{PROVIDER}:{queued.id}"
    assert (row["method"], row["input_tokens"], row["output_tokens"]) == ("POST", 1500, 40)


def test_a_restart_between_two_reads_bills_the_response_once(
    start_proxy: ProxyFactory, upstream: tuple[Upstream, int], catalog: Path
) -> None:
    first = start_proxy(catalog=catalog)
    with _client(first, upstream[1]) as client:
        queued = client.responses.create(model="o4-mini", input="otters", background=True)
        _poll_to_the_end(client, queued.id)
    assert len(_settled(first, 1)) == 1
    first.stop()
    second = start_proxy(catalog=catalog, options={"meter_db": str(first.db)})
    second.db = first.db  # read the one store
    with _client(second, upstream[1]) as client:
        client.responses.create(model="o4-mini", input="plain call")  # the writer's first batch
        assert len(_settled(second, 2)) == 2
        client.responses.retrieve(queued.id)  # read again an hour later, or elsewhere
    rows = _settled(second, 3)
    assert len(rows) == 2, rows
    [row] = [r for r in rows if r["response_id"] == queued.id]
    _check_billed(row, queued.id, upstream[0])


def test_a_response_not_made_in_background_is_not_billed_again_when_read(
    start_proxy: ProxyFactory, upstream: tuple[Upstream, int], catalog: Path
) -> None:
    proxy = start_proxy(catalog=catalog)
    with _client(proxy, upstream[1]) as client:
        made = client.responses.create(model="o4-mini", input="otters")
        client.responses.retrieve(made.id)
        client.responses.retrieve(made.id)
    [row] = _settled(proxy, 1)
    assert (row["method"], row["event_id"].startswith("ml:")) == ("POST", True)
    assert {k: row[k] for k in BILLED} == BILLED


def test_compact_is_metered(
    start_proxy: ProxyFactory, upstream: tuple[Upstream, int], catalog: Path
) -> None:
    proxy = start_proxy(catalog=catalog)
    url = f"http://127.0.0.1:{upstream[1]}/v1/responses/compact"
    body = {"model": "gpt-5.1-codex-max", "input": [{"role": "user", "content": "Summarize"}]}
    assert post_via(proxy, url, body, KEYS["alice"]).status_code == 200
    [row] = _settled(proxy, 1)
    assert (row["consumer"], row["model"], row["path"]) == (
        "alice",
        "gpt-5.1-codex-max",
        "/v1/responses/compact",
    )
    assert {k: row[k] for k in BILLED} == BILLED
    assert row["estimated"] is False


def test_a_billed_path_that_is_not_metered_is_logged_once(
    start_proxy: ProxyFactory, upstream: tuple[Upstream, int], catalog: Path
) -> None:
    proxy = start_proxy(catalog=catalog)
    port = upstream[1]
    audio = f"http://127.0.0.1:{port}/v1/audio/transcriptions?secret=q"
    embed = f"http://localhost.test:{port}/v1beta/models/e:embedContent?key=AIza-secret-in-query"
    for _ in range(3):
        post_via(proxy, audio, {"model": "gpt-4o-transcribe"}, KEYS["alice"])
        post_via(proxy, embed, {"content": {}}, KEYS["alice"])
    proxy.wait_for_log(r"embedContent is billed")
    log = proxy.log_text()
    lines = [line for line in log.splitlines() if "billed by the provider" in line]
    assert len(lines) == 2, lines
    assert f"{PROVIDER} POST /v1/audio/transcriptions is billed by the provider" in lines[0]
    assert "not metered (audio)" in lines[0] and "docs/proxy.md" in lines[0]
    assert "fake-gemini-bg POST /v1beta/models/e:embedContent" in lines[1]
    assert "secret" not in log and KEYS["alice"] not in log


def _governed(catalog: Path) -> None:
    """Alice's customer on a plan with a hard limit of 1,000 output tokens."""
    meter = {"provider": PROVIDER, "token_types": ["output"]}
    features = [{"key": "out", "name": "Output", "meter": meter}]
    with_plan(catalog, features, [{"feature": "out", "limit": 1000}])


def test_a_queued_background_response_holds_its_reservation_until_read(
    start_proxy: ProxyFactory, upstream: tuple[Upstream, int], catalog: Path
) -> None:
    """A hard limit of 1,000 output tokens; each background call may write 600
    (``max_output_tokens``). The POST's reservation was released when the response was
    queued, so calls were admitted one after another with nothing counted: 20 of 20 at a
    limit of 1,000, 4,000 used once polled. Now the reservation is held until a read
    shows the response ended, then replaced by its usage."""
    fake, port = upstream
    _governed(catalog)
    proxy = start_proxy(catalog=catalog)
    with _client(proxy, port) as client:
        queued = [
            client.responses.create(
                model="o4-mini", input="otters", background=True, max_output_tokens=600
            ).id
            for _ in range(2)  # 0 and 600 reserved < 1,000: both admitted
        ]
        with pytest.raises(openai.RateLimitError, match="held by calls in flight"):
            client.responses.create(
                model="o4-mini", input="otters", background=True, max_output_tokens=600
            )
        for rid in queued:  # made now: their usage counts in this period
            fake.responses[rid][0] = int(time.time())
        done = _poll_to_the_end(client, queued[0])  # 600 used, the other still held
        assert done.status == "completed"
        with pytest.raises(openai.RateLimitError):
            client.responses.create(model="o4-mini", input="otters", background=True)
    rows = [r for r in _settled(proxy, 3) if r["reason"] is None]
    assert [r["event_id"] for r in rows] == [f"response:{PROVIDER}:{queued[0]}"]


#: ``created_at`` values that are no plausible time of a response read now: before, the
#: event's ts was the time of each read (absent, null, a string, a bool), so two reads
#: more than 5 minutes apart stored it twice; 1e30, year 10000 and milliseconds raised
#: OverflowError on every read (never stored); 0, -1 and a year ahead were stored as
#: given (billed in 1970, or in a period not begun). A float is a time: it is used.
HOSTILE_CREATED_AT: dict[str, Any] = {
    "absent": ABSENT,
    "null": None,
    "string": "2026-01-01T00:00:00Z",
    "bool": True,
    "huge": 1e30,
    "year-10000": 253402300800,
    "milliseconds": CREATED_AT * 1000,
    "zero": 0,
    "minus-one": -1,
    "a-year-ahead": CREATED_AT + 366 * 86400,
    "sixty-days-old": CREATED_AT - 60 * 86400,
}


def test_a_background_response_without_a_plausible_created_at_is_billed_once(
    start_proxy: ProxyFactory, upstream: tuple[Upstream, int], catalog: Path
) -> None:
    """Each response read three times, then (the store moved 10 minutes back, as if that
    long had passed) once more after a restart: one event each, at the time of the
    first read. A non-integral ``created_at`` is taken as given."""
    fake, port = upstream
    cases = {**HOSTILE_CREATED_AT, "fraction": CREATED_AT + 0.5}
    first = start_proxy(catalog=catalog)
    rids: dict[str, str] = {}
    with httpx2.Client(proxy=first.url, timeout=20) as client:
        base = f"http://127.0.0.1:{port}/v1/responses"
        headers = {"authorization": f"Bearer {KEYS['alice']}"}
        before = datetime.now(UTC).replace(tzinfo=None)
        for name, created_at in cases.items():
            body = {"model": "o4-mini", "input": name, "background": True}
            rid = client.post(base, json=body, headers=headers).json()["id"]
            fake.responses[rid][0], fake.responses[rid][2] = created_at, 0
            for _ in range(3):
                assert client.get(f"{base}/{rid}", headers=headers).json()["status"] == "completed"
            rids[name] = rid
        after = datetime.now(UTC).replace(tzinfo=None)
    rows = _settled(first, len(cases))
    by_rid = {r["response_id"]: r for r in rows}
    assert sorted(r["response_id"] for r in rows) == sorted(rids.values())
    for name, rid in rids.items():
        ts = by_rid[rid]["ts"]
        if name == "fraction":
            assert ts == datetime.fromtimestamp(CREATED_AT + 0.5, UTC).replace(tzinfo=None)
        else:
            assert before <= ts <= after, (name, ts)
    first.stop()
    with duckdb.connect(str(first.db)) as con:
        con.execute("UPDATE usage_events SET ts = ts - INTERVAL 10 MINUTE")
    second = start_proxy(catalog=catalog, options={"meter_db": str(first.db)})
    second.db = first.db
    with httpx2.Client(proxy=second.url, timeout=20) as client:
        for rid in rids.values():
            client.get(f"{base}/{rid}", headers=headers).raise_for_status()
    rows = _settled(second, len(cases) + 1)
    counts = {name: sum(r["response_id"] == rid for r in rows) for name, rid in rids.items()}
    assert counts == dict.fromkeys(cases, 1)


def test_a_hold_ends_when_another_proxy_stores_the_response(
    start_proxy: ProxyFactory, upstream: tuple[Upstream, int], catalog: Path
) -> None:
    """Proxy A admits a background call (600 held at a limit of 1,000); B, on the same
    store, reads it to its end and stores 600. A kept holding 600 for an hour: with the
    600 stored, it refused a 300-token call ("retry in a moment") that B admitted. A
    store read now finds the event and ends A's hold."""
    fake, port = upstream
    _governed(catalog)
    a = start_proxy(catalog=catalog, options={"meter_governance_refresh": "0.2"})
    b = start_proxy(catalog=catalog, options={"meter_db": str(a.db)})
    b.db = a.db
    with _client(a, port) as via_a:
        rid = via_a.responses.create(
            model="o4-mini", input="otters", background=True, max_output_tokens=600
        ).id
    fake.responses[rid][0] = int(time.time())
    with _client(b, port) as via_b:
        assert _poll_to_the_end(via_b, rid).status == "completed"
    [row] = [r for r in _settled(b, 1) if r["reason"] is None]
    assert row["output_tokens"] == 600
    time.sleep(1.0)  # a few of A's store reads
    with _client(a, port) as via_a:
        via_a.responses.create(model="o4-mini", input="otters", max_output_tokens=300)
