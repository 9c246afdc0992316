"""The event store: migrations, and waiting out another process's lock on the file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from meterline.migrations import EVENT_MIGRATIONS, migrate
from meterline.store import EVENT_COLUMNS, StoreError, open_store, store


def test_migrations_apply_once(tmp_path: Path) -> None:
    db = tmp_path / "m.duckdb"
    with store(db) as con:
        assert migrate(con, EVENT_MIGRATIONS) == [m.name for m in EVENT_MIGRATIONS]
        assert migrate(con, EVENT_MIGRATIONS) == []
        cols = [r[0] for r in con.execute("DESCRIBE usage_events").fetchall()]
    assert tuple(cols) == EVENT_COLUMNS


def test_columns_a_recorded_migration_adds_are_added_again_when_missing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A table that lacks columns although their migrations are recorded (met once on a
    new lake: every flush then failed on the missing column) gets them back at the next
    migrate, with a warning; one that has them is left alone."""
    with store(tmp_path / "m.duckdb") as con:
        migrate(con, EVENT_MIGRATIONS)
        con.execute("ALTER TABLE usage_events DROP COLUMN reason")
        con.execute("ALTER TABLE usage_events DROP COLUMN speed")
        with caplog.at_level("WARNING", logger="meterline.store"):
            assert migrate(con, EVENT_MIGRATIONS) == []  # nothing unrecorded to apply
            assert migrate(con, EVENT_MIGRATIONS) == []
        cols = [r[0] for r in con.execute("DESCRIBE usage_events").fetchall()]
        assert sorted(cols) == sorted(EVENT_COLUMNS)
    assert [r.getMessage() for r in caplog.records] == [
        "meterline: the events table lacked reason, speed although its migrations are "
        "recorded: added again"
    ]


def test_reader_waits_for_the_writer_to_let_go(tmp_path: Path) -> None:
    db = tmp_path / "m.duckdb"
    with store(db) as con:
        migrate(con, EVENT_MIGRATIONS)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import duckdb, sys, time
                con = duckdb.connect({str(db)!r})
                print("locked", flush=True)
                time.sleep(1.0)
                con.close()
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    started = time.monotonic()
    with store(db, read_only=True, wait_s=20) as con:
        waited = time.monotonic() - started
        assert con.execute("SELECT count(*) FROM usage_events").fetchone() == (0,)
    holder.wait(timeout=10)
    holder.stdout.close()
    assert waited > 0.5  # it really was locked, and we waited instead of failing


def test_lock_held_too_long_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "m.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; c = duckdb.connect({str(db)!r}); print('x', flush=True); "
            "time.sleep(5)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        holder.stdout.readline()
        with pytest.raises(StoreError, match=r"m\.duckdb: cannot open: .*[Ll]ock"):
            open_store(db, wait_s=0.3)
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


def test_reading_a_missing_database_says_so(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"no such database"):
        open_store(tmp_path / "none.duckdb", read_only=True)


def test_a_reader_waits_out_a_file_being_created(tmp_path: Path) -> None:
    """The proxy creates its DuckDB file and writes the headers an instant later; a reader
    that opens it in between (DuckDB: "not a valid DuckDB database file") tries again
    instead of failing (it did, once in a full suite, in
    test_separate_reader_while_proxy_writes)."""
    db = tmp_path / "new.duckdb"
    made = tmp_path / "made.duckdb"
    with store(made) as con:
        migrate(con, EVENT_MIGRATIONS)
    db.touch()  # created, no headers yet (after the slow part: the file is seconds new)

    def headers_written() -> None:
        time.sleep(0.3)
        made.replace(db)

    writer = threading.Thread(target=headers_written)
    writer.start()
    try:
        with store(db, read_only=True, wait_s=10) as con:
            assert con.execute("SELECT count(*) FROM usage_events").fetchone() == (0,)
    finally:
        writer.join()


def test_a_file_that_is_not_duckdb_is_a_clear_error_at_once(tmp_path: Path) -> None:
    """The same error on a file that is not new (a wrong --db) is not waited out."""
    db = tmp_path / "notes.duckdb"
    db.write_text("not a database\n")
    an_hour_ago = time.time() - 3600
    os.utime(db, (an_hour_ago, an_hour_ago))
    started = time.monotonic()
    with pytest.raises(StoreError, match="not a valid DuckDB database file"):
        open_store(db, read_only=True, wait_s=10)
    assert time.monotonic() - started < 2


def test_a_missing_local_lake_is_refused_without_creating_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--db ducklake:typo.ducklake``: DuckDB made a 12 KB metadata file before refusing
    to create the lake (``CREATE_IF_NOT_EXISTS false``); nothing is made now."""
    monkeypatch.setenv("METERLINE_LAKE_DATA", str(tmp_path / "data"))
    for metadata in ("", "duckdb:", "sqlite:"):
        locator = f"ducklake:{metadata}{tmp_path / 'typo.ducklake'}"
        with pytest.raises(StoreError, match="holds no Meterline lake"):
            open_store(locator, read_only=True, create_lake=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    made = tmp_path / "made.ducklake"
    with store(f"ducklake:{made}") as con:  # a proxy's first flush makes it
        migrate(con, EVENT_MIGRATIONS)
    with store(f"ducklake:{made}", read_only=True, create_lake=False) as con:
        assert con.execute("SELECT count(*) FROM usage_events").fetchone() == (0,)
