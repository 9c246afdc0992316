"""The writer on a lake that stages: replays and repeats are checked against the staged
lines, so a batch whose ``COPY`` committed before its process died is not staged twice.

A real PostgreSQL and lake; the real :class:`SpoolWriter` with
``METERLINE_LAKE_INGEST=staged``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from addons.metering import eventid
from addons.metering.spool import Spool
from addons.metering.stagedflush import new_lines
from addons.metering.writer import SpoolWriter
from meterline import lakestage
from meterline.lakestage import staged_reads
from meterline.store import store
from tests.support.postgres import create_database, postgres_server


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with postgres_server() as conninfo:
        yield conninfo


@pytest.fixture
def lake(server: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch) -> str:
    name = "flush_" + request.node.name.lower()[:40]
    monkeypatch.setenv("METERLINE_LAKE_DATA", str(tmp_path / "lake-data"))
    monkeypatch.setenv("METERLINE_LAKE_INGEST", "staged")
    monkeypatch.setenv("METERLINE_LAKE_MAINTAIN_EVERY", "0")
    monkeypatch.setenv("METERLINE_LAKE_MOVE_EVERY", "3600")
    return "ducklake:postgres:" + create_database(server, name)


def _event(event_id: str) -> dict[str, Any]:
    return {
        "event_id": event_id, "ts": "2026-12-05T10:00:00", "consumer": "acme",
        "provider": "openai", "flavor": "openai", "model": "gpt-4o", "input_tokens": 5,
        "cached_input_tokens": 0, "cache_write_tokens": 0, "output_tokens": 7,
        "reasoning_tokens": 0, "estimated": False, "method": "POST", "host": "h",
        "path": "/v1/chat/completions", "status": 200, "streamed": False,
    }  # fmt: skip


def _seen(lake: str) -> Counter[str]:
    with store(lake) as con, staged_reads(con, lake):
        return Counter(r[0] for r in con.execute("SELECT event_id FROM usage_events").fetchall())


def test_a_replayed_batch_whose_copy_committed_is_not_staged_again(
    lake: str, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    first = SpoolWriter(spool, lake, interval=3600)
    for n in range(5):
        spool.append(_event(f"ml:run1-{n}"))
    assert first.flush()  # makes the lake, stages 5
    first.stop()
    # A process that died after its COPY committed, before it removed the segment: the
    # segment is still in the spool, its lines already staged.
    for n in range(5, 10):
        spool.append(_event(f"ml:run1-{n}"))
    spool.seal()
    [segment] = spool.sealed()
    with closing(lakestage.connect(lake)) as pg:
        assert lakestage.stage(pg, segment.read_bytes().splitlines()) == (5, 0)
    spool.close()

    again = SpoolWriter(Spool(tmp_path / "spool"), lake, interval=3600)
    again.spool.append(_event("ml:run2-0"))
    assert again.flush()
    assert again.checked_batches == 1  # a new process's first batch is checked
    again.stop()
    seen = _seen(lake)
    assert seen == Counter({f"ml:run1-{n}": 1 for n in range(10)} | {"ml:run2-0": 1})


def test_a_provider_named_event_read_again_is_staged_once(lake: str, tmp_path: Path) -> None:
    """A background response read again later (by this proxy or another) has the same
    id: looked up among the staged lines, whatever its time."""
    keyed = eventid.response_event_id("openai", "resp_abc")
    spool = Spool(tmp_path / "spool")
    writer = SpoolWriter(spool, lake, interval=3600)
    spool.append(_event(keyed))
    spool.append(_event("ml:a-1"))
    assert writer.flush()
    spool.append({**_event(keyed), "ts": "2026-12-05T11:30:00"})  # read again, later
    spool.append(_event("ml:a-2"))
    assert writer.flush()
    writer.stop()
    spool.close()
    assert _seen(lake) == Counter({keyed: 1, "ml:a-1": 1, "ml:a-2": 1})


def test_new_lines_keeps_the_first_line_of_each_new_id() -> None:
    lines = [b'{"event_id":"a"}', b'{"event_id":"b"}', b'{"event_id":"a"}', b"torn{", b""]
    assert new_lines(lines, {"b"}) == [b'{"event_id":"a"}']
