"""An empty store file is a store not yet created: writers fill it, readers say so."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from billing.store import billing_store
from meterline.emptystore import fill_if_empty
from meterline.migrations import EVENT_MIGRATIONS, migrate
from meterline.store import StoreError, open_store, store


def _an_hour_old(path: Path) -> None:
    then = time.time() - 3600
    os.utime(path, (then, then))


def test_a_writer_makes_an_empty_file_a_store(tmp_path: Path) -> None:
    db = tmp_path / "m.duckdb"
    db.touch()
    _an_hour_old(db)
    with store(db) as con:
        migrate(con, EVENT_MIGRATIONS)
        con.execute("CREATE TABLE t AS SELECT 1 AS x")
    with store(db, read_only=True) as con:
        assert con.execute("SELECT x FROM t").fetchall() == [(1,)]


def test_a_file_with_content_is_never_filled(tmp_path: Path) -> None:
    db = tmp_path / "notes.duckdb"
    db.write_bytes(b"\0")
    assert fill_if_empty(str(db)) is False
    assert db.read_bytes() == b"\0"
    with pytest.raises(StoreError, match="not a valid DuckDB database file"):
        open_store(db, wait_s=0.2)
    assert db.read_bytes() == b"\0"


def test_readers_and_billing_say_an_empty_file_is_no_database(tmp_path: Path) -> None:
    """Not "not a valid DuckDB database file", and the file is left as it is."""
    db = tmp_path / "m.duckdb"
    db.touch()
    _an_hour_old(db)
    said = r"no such database \(an empty file: nothing metered yet\?\)"
    with pytest.raises(StoreError, match=said):
        open_store(db, read_only=True, wait_s=5)
    with (
        pytest.raises(StoreError, match=said),
        billing_store(db),
    ):
        pass
    assert db.stat().st_size == 0


def test_an_empty_file_held_by_another_process_is_waited_for(tmp_path: Path) -> None:
    """A process creating the file holds DuckDB's lock (``fcntl``, the whole file): the
    writer does not write into it meanwhile, and opens it once it is let go."""
    db = tmp_path / "m.duckdb"
    db.touch()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import fcntl, os, sys, time
                fd = os.open({str(db)!r}, os.O_RDWR)
                fcntl.lockf(fd, fcntl.LOCK_EX)
                print("held", flush=True)
                time.sleep(0.5)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        assert fill_if_empty(str(db)) is False
        assert db.stat().st_size == 0
        with store(db, wait_s=10) as con:
            assert con.execute("SELECT 42").fetchone() == (42,)
    finally:
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


def test_writers_racing_for_an_empty_file_make_one_store(tmp_path: Path) -> None:
    """Four processes open the same empty file at once: each fills it only while it holds
    the lock and finds it still empty, so no one's rows go to a file filled over."""
    db = tmp_path / "m.duckdb"
    db.touch()
    code = textwrap.dedent(
        """
        import sys
        from meterline.store import store
        with store(sys.argv[1], wait_s=30) as con:
            con.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
            con.execute("INSERT INTO t VALUES (?)", [int(sys.argv[2])])
        """
    )
    writers = [subprocess.Popen([sys.executable, "-c", code, str(db), str(n)]) for n in range(4)]
    assert [w.wait(60) for w in writers] == [0, 0, 0, 0]
    with store(db, read_only=True) as con:
        assert sorted(r[0] for r in con.execute("SELECT n FROM t").fetchall()) == [0, 1, 2, 3]
