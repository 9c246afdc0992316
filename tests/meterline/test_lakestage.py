"""Staged ingest on a real lake (PostgreSQL catalog): exact before, during and after moves."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from addons.metering.batchsql import APPEND_SQL, _files_literal
from meterline import lakestage
from meterline.eventschema import EVENT_COLUMNS, create_table_sql
from meterline.migrations import EVENT_MIGRATIONS, migrate
from meterline.store import store
from tests.support.postgres import create_database, postgres_server

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with postgres_server() as conninfo:
        yield conninfo


@pytest.fixture
def lake(server: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch) -> str:
    """A fresh lake (its own database) with the events table and staging made."""
    name = "stage_" + request.node.name.replace("[", "_").replace("]", "").lower()[:40]
    conninfo = create_database(server, name)
    monkeypatch.setenv("METERLINE_LAKE_DATA", str(tmp_path / "lake-data"))
    locator = f"ducklake:postgres:{conninfo}"
    with store(locator) as con:
        migrate(con, EVENT_MIGRATIONS)
        lakestage.create(con)
    return locator


@pytest.fixture
def connections() -> Iterator[list[Any]]:
    """The test's psycopg connections, closed after it."""
    opened: list[Any] = []
    yield opened
    for pg in opened:
        pg.close()


@pytest.fixture
def connect(lake: str, connections: list[Any]) -> Any:
    """A new psycopg connection to the lake's catalog database (as a proxy would hold)."""

    def open_one() -> Any:
        pg = psycopg.connect(lake.removeprefix("ducklake:postgres:"), autocommit=True)
        connections.append(pg)
        return pg

    return open_one


@pytest.fixture
def view(connect: Any) -> Iterator[lakestage.StagedView]:
    """A reader's view of the staged lines (its own psycopg connection), closed after."""
    staged = lakestage.StagedView(connect())
    yield staged
    staged.close()


def _line(n: int, **extra: object) -> bytes:
    event = {
        "event_id": f"openai:chatcmpl-{n}", "ts": "2026-12-05T10:00:00.000001",
        "consumer": "acme", "key_fingerprint": "sha256:00", "provider": "openai",
        "flavor": "openai", "model": "gpt-4o", "input_tokens": 100 + n,
        "cached_input_tokens": 0, "cache_write_tokens": 0, "output_tokens": 7,
        "reasoning_tokens": 0, "estimated": False, "response_id": f"chatcmpl-{n}",
        "request_id": f"req-{n}", "method": "POST", "host": "api.openai.com",
        "path": "/v1/chat/completions", "status": 200, "streamed": False,
        "latency_ms": 12.5, "ttft_ms": 3.0, "proxy_id": "p1", **extra,
    }  # fmt: skip
    return json.dumps(event, ensure_ascii=False).encode() + b"\n"


def _read(con: duckdb.DuckDBPyConnection, view: lakestage.StagedView) -> list[tuple[Any, ...]]:
    """Every event a reader sees: the lake's and the staged ones (refreshed now)."""
    view.refresh(con)
    cols = ", ".join(EVENT_COLUMNS)
    return con.execute(f"SELECT {cols} FROM usage_events ORDER BY ALL").fetchall()


def _count(con: duckdb.DuckDBPyConnection, view: lakestage.StagedView) -> int:
    view.refresh(con)
    row = con.execute("SELECT count(*) FROM usage_events").fetchone()
    return int(row[0]) if row else -1


def test_staged_events_read_as_the_append_stores_them_before_and_after_their_move(
    lake: str, tmp_path: Path, connect: Any, view: lakestage.StagedView
) -> None:
    lines = [
        _line(1),
        _line(2, model='gpt-4o "quoted" \\ back\\slash é \u2603'),
        _line(3, web_search_calls=2),  # the columns it lacks: their defaults, as appended
        b'{"event_id": "openai:torn", "ts": "2026-12-05T10:0',  # torn by a crash
        b'{"event_id":\t"openai:tab"}',  # a control character: never the spool's
        b"\xff\xfe not utf-8",
    ]
    pg = connect()
    before = datetime.now(UTC).replace(tzinfo=None)
    assert lakestage.stage(pg, lines) == (4, 2)  # the torn line is staged, read as nothing
    after = datetime.now(UTC).replace(tzinfo=None)
    pg.execute("SET datestyle = 'SQL, DMY'")  # a server that prints dates its own way

    # What the proxy's append stores from the same lines (in a DuckDB file of its own).
    segment = tmp_path / "segment.jsonl"
    segment.write_bytes(b"".join(line.rstrip(b"\n") + b"\n" for line in lines))
    plain = duckdb.connect(str(tmp_path / "plain.duckdb"))
    plain.execute(create_table_sql())
    sql = APPEND_SQL.replace("$files", _files_literal([segment]))
    plain.execute(sql.replace("$ingested_at", "TIMESTAMP '2000-01-01'"))
    expected = plain.execute("SELECT * FROM usage_events ORDER BY ALL").fetchall()
    assert len(expected) == 3
    at = EVENT_COLUMNS.index("ingested_at")

    def without_ingested_at(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        return sorted(r[:at] + r[at + 1 :] for r in rows)

    with store(lake) as con:
        staged = _read(con, view)
        assert without_ingested_at(staged) == without_ingested_at(expected)
        assert all(before <= r[at] <= after for r in staged)  # when it was staged
        assert lakestage.move(con, pg, tmp_path) == 3
        assert _read(con, view) == staged  # the same, now in the lake
        assert con.execute("SELECT count(*) FROM lake.main.usage_events").fetchone() == (3,)
        assert lakestage.move(con, pg, tmp_path) == 0  # nothing new: nothing added
        assert con.execute("SELECT count(*) FROM lake.main.usage_events").fetchone() == (3,)
    assert not list(tmp_path.glob("staged-moving-*"))  # the lines in transit are gone


def test_the_lines_a_reader_copies_are_private(
    lake: str, connect: Any, view: lakestage.StagedView
) -> None:
    """A reader copies the staged lines through a file of its own directory (0700),
    deleted once read; the directory goes with the view."""
    pg = connect()
    lakestage.stage(pg, [_line(1)])
    old = os.umask(0o022)
    try:
        with store(lake) as con:
            assert _count(con, view) == 1
    finally:
        os.umask(old)
    work = view._work
    assert work.stat().st_mode & 0o777 == 0o700 and list(work.iterdir()) == []
    view.close()
    assert not work.exists()


def test_reads_stay_exact_while_proxies_stage_and_moves_run(
    lake: str, tmp_path: Path, connect: Any, view: lakestage.StagedView
) -> None:
    """Every read counts at least the lines staged before it began and at most those
    staged before it ended, whatever the moves did meanwhile; afterwards the lake holds
    each line once."""
    committed = [0]
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def proxy(p: int) -> None:
        pg = connect()
        n = 0
        while not stop.is_set():
            lakestage.stage(pg, [_line(p * 1_000_000 + n + i) for i in range(20)])
            n += 20
            with lock:
                committed[0] += 20

    def mover() -> None:
        pg = connect()
        with store(lake) as con:
            while not stop.is_set():
                lakestage.move(con, pg, tmp_path)

    def guarded(fn: Any, *args: object) -> None:
        try:
            fn(*args)
        except BaseException as e:  # reported by the test, not lost in a thread
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=guarded, args=(proxy, p)) for p in range(3)]
    threads.append(threading.Thread(target=guarded, args=(mover,)))
    for t in threads:
        t.start()
    reads: list[tuple[int, int, int]] = []
    pg = connect()
    try:
        with store(lake) as con:
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline and not stop.is_set():
                with lock:
                    low = committed[0]
                count = _count(con, view)
                with lock:
                    high = committed[0]
                reads.append((low, count, high))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert len(reads) >= 5
    assert [r for r in reads if not r[0] <= r[1] <= r[2]] == []
    with store(lake) as con:
        lakestage.move(con, pg, tmp_path)
        moves = con.execute(f"SELECT count(*) FROM {lakestage.MOVES}").fetchone()
        assert moves and moves[0] >= 3  # moves ran during the reads
        stored = con.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM lake.main.usage_events"
        )
        assert stored.fetchone() == (committed[0], committed[0])
        assert _count(con, view) == committed[0]


def test_a_refresh_takes_the_lines_of_a_transaction_that_ended_after_the_last_one(
    lake: str, tmp_path: Path, connect: Any, view: lakestage.StagedView
) -> None:
    """Refreshes copy only from the last copy's ``xmin`` on: a stager whose transaction
    began before another's but commits after it (a slow ``COPY``) is neither missed nor
    doubled, and a move meanwhile does not change the count."""
    slow, fast = connect(), connect()
    with store(lake) as con:
        with slow.transaction():  # held open across the first refresh
            lakestage.stage(slow, [_line(1), _line(2)])
            lakestage.stage(fast, [_line(3)])  # a later transaction, committed first
            assert _count(con, view) == 1
            assert lakestage.move(con, fast, tmp_path) == 0  # bound: the open one
            assert _count(con, view) == 1
        assert _count(con, view) == 3
        assert lakestage.move(con, fast, tmp_path) == 3
        assert _count(con, view) == 3
        lakestage.stage(fast, [_line(4)])
        assert _count(con, view) == 4
        ids = con.execute("SELECT event_id FROM usage_events ORDER BY 1").fetchall()
    assert ids == [(f"openai:chatcmpl-{n}",) for n in (1, 2, 3, 4)]


@pytest.mark.parametrize("round_", range(5))
def test_a_fleet_started_together_makes_the_staging_tables_once(
    server: str, tmp_path: Path, monkeypatch, round_: int
) -> None:
    """Ten proxies' first flushes create the staging tables at the same instant: the
    losers of the race (PostgreSQL's catalog, DuckLake's commit) find them made, none
    fails (a fleet bench of ten writers failed two first flushes on it). Five rounds:
    one round lost the race in about half the tries without the retry."""
    monkeypatch.setenv("METERLINE_LAKE_DATA", str(tmp_path / "lake-data"))
    locator = "ducklake:postgres:" + create_database(server, f"stage_race_{round_}")
    with store(locator) as con:
        migrate(con, EVENT_MIGRATIONS)
    opened = contextlib.ExitStack()
    cons = [opened.enter_context(store(locator)) for _ in range(10)]
    start = threading.Barrier(len(cons))
    errors: list[BaseException] = []

    def create(con: duckdb.DuckDBPyConnection) -> None:
        start.wait()
        try:
            lakestage.create(con)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=create, args=(con,)) for con in cons]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    opened.close()
    assert errors == []
    with store(locator) as con:
        assert lakestage.stages(con)


def test_two_movers_at_once_move_each_line_once(lake: str, tmp_path: Path, connect: Any) -> None:
    pg = connect()
    stop = threading.Event()
    moved: list[int] = []
    errors: list[BaseException] = []

    def mover(k: int) -> None:
        work = tmp_path / f"mover-{k}"
        work.mkdir()
        try:
            own = connect()
            with store(lake) as con:
                while not stop.is_set():
                    moved.append(lakestage.move(con, own, work))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=mover, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    total = 0
    try:
        for batch in range(40):
            lakestage.stage(pg, [_line(batch * 100 + i) for i in range(25)])
            total += 25
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    with store(lake) as con:
        lakestage.move(con, pg, tmp_path)
        stored = con.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM lake.main.usage_events"
        )
        assert stored.fetchone() == (total, total)
    assert sum(moved) <= total


_MOVER = """
import sys, time
from pathlib import Path
import psycopg
from meterline import lakestage
from meterline.store import store
lake, work = sys.argv[1], Path(sys.argv[2])
pg = psycopg.connect(lake.removeprefix("ducklake:postgres:"), autocommit=True)
with store(lake) as con:
    print("ready", flush=True)
    while True:
        lakestage.move(con, pg, work)
"""


def test_a_mover_killed_at_any_point_leaves_each_line_once(
    lake: str, tmp_path: Path, connect: Any, view: lakestage.StagedView
) -> None:
    """kill -9 of a process moving in a loop, ten times, while lines keep being staged."""
    pg = connect()
    total = 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for kill in range(10):
        mover = subprocess.Popen(
            [sys.executable, "-c", _MOVER, lake, str(tmp_path)],
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            assert mover.stdout is not None and mover.stdout.readline() == b"ready\n"
            for batch in range(5):
                lakestage.stage(pg, [_line(kill * 10_000 + batch * 100 + i) for i in range(30)])
                total += 30
                time.sleep(0.01 * (kill % 4))
        finally:
            mover.send_signal(signal.SIGKILL)
            mover.wait()
            if mover.stdout is not None:
                mover.stdout.close()
    with store(lake) as con:
        lakestage.move(con, pg, tmp_path)
        stored = con.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM lake.main.usage_events"
        )
        assert stored.fetchone() == (total, total)
        assert _count(con, view) == total


def test_forget_deletes_only_lines_moved_long_ago(
    lake: str, tmp_path: Path, connect: Any, view: lakestage.StagedView
) -> None:
    pg = connect()
    with store(lake) as con:
        lakestage.stage(pg, [_line(i) for i in range(3)])
        assert lakestage.move(con, pg, tmp_path) == 3
        lakestage.stage(pg, [_line(i) for i in range(3, 5)])
        assert lakestage.forget(con, pg) == 0  # the move was just now: a reader may need them
        con.execute(f"UPDATE {lakestage.MOVES} SET moved_at = moved_at - INTERVAL 11 MINUTE")
        assert lakestage.forget(con, pg) == 3  # moved 11 minutes ago: gone from staging
        assert _count(con, view) == 5  # the lake has them; 2 staged
        assert lakestage.move(con, pg, tmp_path) == 2
        assert _count(con, view) == 5


def test_a_move_refuses_a_connection_that_would_hold_a_transaction_open(
    lake: str, tmp_path: Path, connections: list[Any]
) -> None:
    pg = psycopg.connect(lake.removeprefix("ducklake:postgres:"))  # not in autocommit mode
    connections.append(pg)
    with store(lake) as con, pytest.raises(lakestage.StageError, match="autocommit"):
        lakestage.move(con, pg, tmp_path)


def test_a_lake_on_a_duckdb_catalog_cannot_stage(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("METERLINE_LAKE_DATA", str(tmp_path / "lake-data"))
    with (
        store(f"ducklake:{tmp_path / 'meta.ducklake'}") as con,
        pytest.raises(lakestage.StageError, match="catalog is PostgreSQL"),
    ):
        lakestage.create(con)


#: Values a line's text may hold (JSON escapes the rest): each read back as staged.
_TRICKY = ["plain", "ends in a backslash \\", "\\\\", 'a "quote"', "é \u2603", "a\\nb", "{}:,"]


def test_lines_read_back_byte_for_byte_across_fetch_rows(
    lake: str, connect: Any, view: lakestage.StagedView
) -> None:
    """More lines than one fetched row holds (2,000 a row), each with a value of
    :data:`_TRICKY`: every line read back once, its text as staged."""
    pg = connect()
    total = 2 * lakestage._LINES_PER_ROW + 500
    lakestage.stage(pg, [_line(n, model=_TRICKY[n % len(_TRICKY)]) for n in range(total)])
    with store(lake) as con:
        assert _count(con, view) == total
        rows = con.execute("SELECT request_id, model FROM usage_events").fetchall()
    assert sorted(rows) == sorted((f"req-{n}", _TRICKY[n % len(_TRICKY)]) for n in range(total))
