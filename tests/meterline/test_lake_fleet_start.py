"""Proxies of a fleet starting at once on a new lake: every first flush goes in and the
lake ends with the whole event schema; a lake that lost an event column gets it back."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from addons.metering.spool import Spool
from addons.metering.writer import SpoolWriter
from meterline.eventschema import EVENT_COLUMNS
from meterline.store import EVENT_MIGRATIONS, migrate, store
from tests.meterline.test_lakemaint import event
from tests.support.postgres import create_database, postgres_server

WRITERS = 4


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with postgres_server() as conninfo:
        yield conninfo


def _lake(server: str, name: str) -> str:
    return f"ducklake:postgres:{create_database(server, name)}"


def _columns(lake: str) -> list[str]:
    with store(lake) as con:
        return [
            name
            for (name,) in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_catalog = "
                "'lake' AND table_name = 'usage_events' ORDER BY ordinal_position"
            ).fetchall()
        ]


def test_a_new_lake_gets_its_event_table_whole_in_one_commit(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new lake's table was the first migration's, then one ALTER commit per later
    column: proxies starting together saw it half-built (a first flush failed with
    ``Binder Error: ... does not have a column with name "cache_write_1h_tokens"``).
    Now no commit of a new lake alters the table, and every migration is recorded."""
    monkeypatch.setenv("METERLINE_LAKE_DATA", str(tmp_path / "data"))
    lake = _lake(server, "whole")
    with store(lake) as con:
        assert migrate(con, EVENT_MIGRATIONS) == [m.name for m in EVENT_MIGRATIONS]
        changes = [
            str(c)
            for (c,) in con.execute("SELECT changes FROM ducklake_snapshots('lake')").fetchall()
        ]
        names = con.execute("SELECT name FROM schema_migrations").fetchall()
        recorded = sorted(name for (name,) in names)
        assert migrate(con, EVENT_MIGRATIONS) == []
    assert not [c for c in changes if "altered" in c], changes
    assert recorded == [m.name for m in EVENT_MIGRATIONS]
    assert _columns(lake) == list(EVENT_COLUMNS)


def test_writers_starting_together_on_a_new_lake_all_flush(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fleet case: four writers make their first flush at the same moment on a lake
    nobody created yet. Every flush goes in and the table has every column."""
    monkeypatch.setenv("METERLINE_LAKE_DATA", str(tmp_path / "data"))
    lake = _lake(server, "together")
    writers = [SpoolWriter(Spool(tmp_path / f"spool-{p}"), lake) for p in range(WRITERS)]
    barrier = threading.Barrier(WRITERS)
    flushed: list[bool] = []

    def first_flush(writer: SpoolWriter, p: int) -> None:
        writer.spool.append(event(p, "alice", f"p{p}"))
        barrier.wait()
        flushed.append(writer.flush())

    threads = [threading.Thread(target=first_flush, args=(w, p)) for p, w in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert flushed == [True] * WRITERS
        assert [w.failures for w in writers] == [0] * WRITERS
    finally:
        for w in writers:
            w.stop()
            w.spool.close()
    assert _columns(lake) == list(EVENT_COLUMNS)
    with store(lake) as con:
        assert con.execute("SELECT count(*) FROM usage_events").fetchone() == (WRITERS,)


def test_a_lake_that_lost_an_event_column_gets_it_back_at_the_next_start(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration recorded and its column missing (the table committed without it):
    nothing added it again, and every flush of every proxy failed with a Binder Error.
    The next start adds it, and events stored before read its default."""
    monkeypatch.setenv("METERLINE_LAKE_DATA", str(tmp_path / "data"))
    lake = _lake(server, "lost_column")
    spool = Spool(tmp_path / "spool")
    writer = SpoolWriter(spool, lake)
    try:
        spool.append(event(1, "alice", "p"))
        assert writer.flush()
    finally:
        writer.stop()
    with store(lake) as con:
        con.execute("ALTER TABLE usage_events DROP COLUMN cache_write_1h_tokens")
    assert "cache_write_1h_tokens" not in _columns(lake)
    restarted = SpoolWriter(spool, lake)
    try:
        spool.append(event(2, "alice", "p"))
        assert restarted.flush()
        assert restarted.failures == 0
    finally:
        restarted.stop()
        spool.close()
    assert set(_columns(lake)) == set(EVENT_COLUMNS)
    with store(lake) as con:
        rows = con.execute(
            "SELECT event_id, cache_write_1h_tokens FROM usage_events ORDER BY event_id"
        ).fetchall()
    assert rows == [("openai:p-1", 0), ("openai:p-2", 0)]
