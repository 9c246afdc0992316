from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from addons.metering.spool import Spool
from addons.metering.writer import (
    FLUSH_DUTY_FACTOR,
    MAX_INTERVAL_STRETCH,
    RACED_WAIT_S,
    SpoolWriter,
    dephase,
    next_wait,
)
from meterline.store import store

REPO_ROOT = Path(__file__).resolve().parents[3]


def _event(event_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "ts": "2026-03-01T12:00:00.123456",
        "consumer": "alice",
        "key_fingerprint": "sha256:" + "0" * 64,
        "provider": "openai",
        "flavor": "openai",
        "model": "gpt-4o",
        "input_tokens": 10,
        "cached_input_tokens": 2,
        "cache_write_tokens": 0,
        "output_tokens": 5,
        "reasoning_tokens": 1,
        "estimated": False,
        "response_id": None,
        "request_id": "req-1",
        "method": "POST",
        "host": "api.openai.com",
        "path": "/v1/chat/completions",
        "status": 200,
        "streamed": True,
        "latency_ms": 12.5,
        "ttft_ms": 3.25,
        "proxy_id": "p1",
        **extra,
    }


def _rows(db: Path) -> list[tuple[Any, ...]]:
    with store(db, read_only=True) as con:
        return con.execute(
            "SELECT event_id, ts, input_tokens, ingested_at >= ts FROM usage_events ORDER BY 1"
        ).fetchall()


def test_flush_inserts_once_and_deletes_segments(tmp_path: Path) -> None:
    db = tmp_path / "e.duckdb"
    spool = Spool(tmp_path / "spool")
    writer = SpoolWriter(spool, str(db))
    spool.append(_event("a"))
    spool.append(_event("b"))
    spool.append(_event("a"))  # the same event twice in one batch
    assert writer.flush()
    assert spool.sealed() == []
    rows = _rows(db)
    assert [r[0] for r in rows] == ["a", "b"]
    assert str(rows[0][1]) == "2026-03-01 12:00:00.123456" and rows[0][2] == 10 and rows[0][3]
    # A replayed segment (crash between commit and delete) adds nothing.
    spool.append(_event("a"))
    spool.append(_event("c"))
    assert writer.flush()
    assert [r[0] for r in _rows(db)] == ["a", "b", "c"]
    assert writer.inserted == 3
    spool.close()


def test_db_not_held_open_between_flushes(tmp_path: Path) -> None:
    db = tmp_path / "e.duckdb"
    spool = Spool(tmp_path / "spool")
    writer = SpoolWriter(spool, str(db), interval=0.05)
    writer.start()
    spool.append(_event("a"))
    # Read-write opens from another process (as billing does) succeed while the writer
    # runs: the file is free between flushes, and a flush in progress is waited out.
    code = (
        "import sys; from meterline.store import store\n"
        "for _ in range(20):\n"
        "    with store(sys.argv[1], wait_s=5) as con:\n"
        "        con.execute('SELECT 1')\n"
        "print('ok')"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
    )
    for i in range(20):
        spool.append(_event(f"b{i}"))
        time.sleep(0.02)
    out, _ = other.communicate(timeout=60)
    assert other.returncode == 0 and out.strip() == "ok"
    assert writer.stop()
    assert [r[0] for r in _rows(db)] == ["a", *sorted(f"b{i}" for i in range(20))]
    spool.close()


def test_store_failure_keeps_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    writer = SpoolWriter(spool, str(blocker / "e.duckdb"), lock_wait_s=0.1)
    spool.append(_event("a"))
    assert not writer.flush()
    assert len(spool.sealed()) == 1 and writer.failures == 1
    writer.locator = str(tmp_path / "e.duckdb")
    assert writer.flush()
    assert [r[0] for r in _rows(tmp_path / "e.duckdb")] == ["a"]
    spool.close()


def test_waits_out_a_readers_lock(tmp_path: Path) -> None:
    db = tmp_path / "e.duckdb"
    spool = Spool(tmp_path / "spool")
    writer = SpoolWriter(spool, str(db))
    spool.append(_event("a"))
    assert writer.flush()
    spool.append(_event("b"))
    reader_has_it = threading.Event()
    release = threading.Event()

    def hold() -> None:
        import subprocess
        import sys

        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import duckdb,sys,time; c=duckdb.connect(sys.argv[1], read_only=True);"
                "print('open', flush=True); time.sleep(0.5)",
                str(db),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
        reader_has_it.set()
        release.wait(5)
        proc.communicate()

    t = threading.Thread(target=hold)
    t.start()
    assert reader_has_it.wait(10)
    assert writer.flush()  # blocks until the other process lets go, then writes
    release.set()
    t.join()
    assert [r[0] for r in _rows(db)] == ["a", "b"]
    spool.close()


def test_torn_segment_of_a_crash_is_read_line_by_line(tmp_path: Path) -> None:
    import json

    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    lines = [json.dumps(_event("a")), json.dumps(_event("b")), '{"event_id": "c", "ts": "20']
    (spool_dir / "meterline-00000000000000000001-7-000001.open").write_text("\n".join(lines))
    spool = Spool(spool_dir)  # seals the leftover
    writer = SpoolWriter(spool, str(tmp_path / "e.duckdb"))
    assert writer.flush()
    assert [r[0] for r in _rows(tmp_path / "e.duckdb")] == ["a", "b"]
    spool.close()


def test_line_of_the_wrong_shape_does_not_block_the_batch(tmp_path: Path) -> None:
    """A parsable line missing a NOT NULL figure is skipped; the rest of the batch goes in."""
    spool = Spool(tmp_path / "spool")
    writer = SpoolWriter(spool, str(tmp_path / "e.duckdb"))
    spool.append(_event("a"))
    spool.append(_event("bad", input_tokens="many"))
    spool.append({"event_id": "partial"})
    spool.append(_event("b"))
    assert writer.flush()
    assert [r[0] for r in _rows(tmp_path / "e.duckdb")] == ["a", "b"]
    assert spool.sealed() == []
    spool.close()


def test_replay_is_deduplicated_within_the_window_only(tmp_path: Path) -> None:
    """The dedup compares with stored events from (earliest ts of the batch) - 5 minutes on.

    A replayed segment keeps its original ts, so it is always caught, even when it shares a
    batch with much later events; an id stored more than 5 minutes before a batch's earliest
    event is outside the window and counts as a new event.
    """
    db = tmp_path / "e.duckdb"
    spool = Spool(tmp_path / "spool")
    writer = SpoolWriter(spool, str(db))
    t0 = "2026-03-01T12:00:00"
    spool.append(_event("openai:a", ts=t0))
    spool.append(_event("openai:b", ts="2026-03-01T12:01:00"))
    assert writer.flush()
    # Replay of both, in one batch with an event three days later: nothing added twice.
    spool.append(_event("openai:a", ts=t0))
    spool.append(_event("openai:b", ts="2026-03-01T12:01:00"))
    spool.append(_event("openai:c", ts="2026-03-04T12:00:00"))
    assert writer.flush()
    assert [r[0] for r in _rows(db)] == ["openai:a", "openai:b", "openai:c"]
    # Just inside the window (4m59s after "a", the batch's earliest ts): still a duplicate.
    spool.append(_event("openai:a", ts="2026-03-01T12:04:59"))
    assert writer.flush()
    # Exactly 5 minutes after "b": the window's lower bound is inclusive, still a duplicate.
    spool.append(_event("openai:b", ts="2026-03-01T12:06:00"))
    assert writer.flush()
    assert [r[0] for r in _rows(db)] == ["openai:a", "openai:b", "openai:c"]
    # More than 5 minutes after "a" (and the batch starts there): a new event with that id.
    spool.append(_event("openai:a", ts="2026-03-01T12:05:01"))
    assert writer.flush()
    assert [(r[0], str(r[1])) for r in _rows(db) if r[0] == "openai:a"] == [
        ("openai:a", "2026-03-01 12:00:00"),
        ("openai:a", "2026-03-01 12:05:01"),
    ]
    assert writer.inserted == 4
    spool.close()


def test_batch_of_unreadable_lines_only_inserts_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    writer = SpoolWriter(spool, str(tmp_path / "e.duckdb"))
    spool.append({"event_id": "partial"})
    assert writer.flush()
    assert _rows(tmp_path / "e.duckdb") == [] and spool.sealed() == []
    spool.close()


def test_flushes_are_spread_out_when_they_are_costly() -> None:
    """A cheap flush keeps the interval; a costly one (a big backlog) stretches the wait to
    FLUSH_DUTY_FACTOR times the CPU it used, at most MAX_INTERVAL_STRETCH intervals."""
    assert next_wait(1.0, 0.03, failed=False) == 1.0
    assert next_wait(1.0, 0.25, failed=False) == 0.25 * FLUSH_DUTY_FACTOR
    assert next_wait(1.0, 30.0, failed=False) == MAX_INTERVAL_STRETCH
    assert next_wait(0.1, 0.001, failed=True) == 0.1 * MAX_INTERVAL_STRETCH


def test_a_flush_that_raced_moves_the_writers_phase() -> None:
    """A lake flush that waited much longer than it worked (its commit raced another
    writer's) adds a random part of half an interval to the next wait, so writers that
    flush at the same moment of the second spread out; one that did not keeps its phase."""
    rng = random.Random(7)
    assert dephase(0.98, 1.0, RACED_WAIT_S, rng) == 0.98
    moved = [dephase(0.98, 1.0, 0.08, rng) for _ in range(200)]
    assert all(0.98 <= wait <= 1.48 for wait in moved)
    assert max(moved) - min(moved) > 0.4  # new phases over the half interval, not one


def test_file_held_across_flushes_and_freed_when_idle(tmp_path: Path) -> None:
    """Flushes of the writer's loop keep the file attached; an empty one lets it go."""
    db = tmp_path / "e.duckdb"
    spool = Spool(tmp_path / "spool")
    writer = SpoolWriter(spool, str(db))
    for i in range(5):
        spool.append(_event(f"e{i}"))
        assert writer.flush(hold=True)
    assert writer.link.attaches == 1 and writer.link.holds_file
    assert writer.flush(hold=True)  # nothing to write: idle
    assert not writer.link.holds_file
    probe = subprocess.run(  # no waiting allowed: the file must be free right now
        [sys.executable, "-c", "import duckdb,sys; duckdb.connect(sys.argv[1]).close()", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert len(_rows(db)) == 5
    spool.close()


def test_busy_writer_lets_go_when_a_reader_asks(tmp_path: Path) -> None:
    """Traffic never pauses, so only the reader-waiting marker can free the file."""
    db = tmp_path / "e.duckdb"
    spool = Spool(tmp_path / "spool")
    writer = SpoolWriter(spool, str(db), interval=0.1)
    stop = threading.Event()

    def traffic() -> None:
        n = 0
        while not stop.is_set():
            spool.append(_event(f"t{n:05d}"))
            n += 1
            time.sleep(0.005)

    feeder = threading.Thread(target=traffic)
    feeder.start()
    writer.start()
    try:
        deadline = time.monotonic() + 30
        while not writer.link.holds_file and time.monotonic() < deadline:
            time.sleep(0.01)
        assert writer.link.holds_file
        code = (
            "import sys; from meterline.store import store\n"
            "with store(sys.argv[1], read_only=True, wait_s=60) as con:\n"
            "    print(con.execute('SELECT count(*) FROM usage_events').fetchone()[0])"
        )
        reader = subprocess.run(
            [sys.executable, "-c", code, str(db)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO_ROOT,
        )
        assert reader.returncode == 0, reader.stderr
        assert int(reader.stdout) > 0
    finally:
        stop.set()
        feeder.join()
    assert writer.stop()
    assert not (tmp_path / "e.duckdb.reader-waiting").exists()
    spool.close()


def test_only_a_batch_that_may_be_stored_is_checked_against_the_store(tmp_path: Path) -> None:
    """The first batch of a writer (what a previous process left) and a batch with a
    repeated id are checked against the store's ids; every other flush is a plain append.
    A segment committed by a process killed before it could delete it is replayed by the
    next process without doubling anything."""
    db = tmp_path / "e.duckdb"
    spool = Spool(tmp_path / "spool")
    writer = SpoolWriter(spool, str(db))
    spool.append(_event("a"))
    assert writer.flush() and writer.checked_batches == 1  # a new writer: checked
    spool.append(_event("b"))
    spool.append(_event("c"))
    spool.seal()
    [segment] = spool.sealed()
    committed = segment.read_bytes()
    assert writer.flush() and writer.checked_batches == 1  # plain append
    spool.append(_event("b"))  # the same id again a moment later: checked, not added
    assert writer.flush() and writer.checked_batches == 2
    assert writer.stop()
    spool.close()
    # The state a kill -9 between the commit and the delete leaves: the segment is back.
    segment.write_bytes(committed)
    spool = Spool(tmp_path / "spool")
    writer = SpoolWriter(spool, str(db))
    spool.append(_event("d"))
    assert writer.flush() and writer.checked_batches == 1
    assert [r[0] for r in _rows(db)] == ["a", "b", "c", "d"]
    assert writer.stop()
    spool.close()


def test_an_event_named_after_a_providers_id_is_always_checked(tmp_path: Path) -> None:
    """A background response read again, on another proxy or an hour later, makes the
    same event (``response:<provider>:<resp_id>``, ts of its ``created_at``): the writer
    checks it against the store even on a batch it would otherwise append, so it is
    stored once. Before, a writer past its first batch appended it again."""
    db = tmp_path / "e.duckdb"
    keyed = _event("response:openai:resp_1", ts="2026-03-01T09:00:00")
    spools = [Spool(tmp_path / "spool-a"), Spool(tmp_path / "spool-b")]
    a, b = (SpoolWriter(spool, str(db)) for spool in spools)
    for spool, writer, first in zip(spools, (a, b), ("a", "b"), strict=True):
        spool.append(_event(first))  # each writer's first batch: checked anyway
        assert writer.flush() and writer.checked_batches == 1
    spools[0].append(keyed)  # read on proxy A
    assert a.flush()
    spools[1].append(_event("c"))
    spools[1].append(keyed)  # read again on proxy B (the ts: hours before the batch)
    assert b.flush() and b.checked_batches == 2
    spools[0].append(keyed)  # and again on A, past its memory of recent ids
    a.recent.clear()
    assert a.flush()
    assert [r[0] for r in _rows(db)] == ["a", "b", "c", "response:openai:resp_1"]
    spools[0].append(_event("d"))  # an ordinary batch is still a plain append
    assert a.flush() and a.checked_batches == 3
    for spool, writer in zip(spools, (a, b), strict=True):
        assert writer.stop()
        spool.close()


def test_an_event_named_after_a_providers_id_is_found_whatever_its_ts(tmp_path: Path) -> None:
    """A background response whose ``created_at`` the proxy cannot use gets the time of
    the read as ts: a read 10 minutes or a day after the first makes the same id with
    another ts. Before, the check looked only 5 minutes before the batch's earliest ts
    and stored it again, once per read."""
    db = tmp_path / "e.duckdb"
    spool = Spool(tmp_path / "spool")
    writer = SpoolWriter(spool, str(db))
    rid = "response:openai:resp_1"
    spool.append(_event(rid, ts="2026-03-01T09:00:00"))
    assert writer.flush()
    for later in ("2026-03-01T09:10:00", "2026-03-02T09:00:00", "2026-02-28T09:00:00"):
        spool.append(_event("ml:" + later))  # the same batch: the earliest ts is its own
        spool.append(_event(rid, ts=later))
        assert writer.flush()
    rows = [r[:2] for r in _rows(db) if r[0] == rid]
    assert rows == [(rid, datetime(2026, 3, 1, 9, 0))]
    assert writer.stop()
    spool.close()


def test_a_batch_after_a_failed_flush_is_checked(tmp_path: Path) -> None:
    """A failed flush may have committed (a lost connection during COMMIT): the batch
    that retries it is checked against the store."""
    spool = Spool(tmp_path / "spool")
    writer = SpoolWriter(spool, str(tmp_path / "e.duckdb"))
    spool.append(_event("a"))
    assert writer.flush() and writer.checked_batches == 1
    spool.append(_event("b"))
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    writer.locator = str(blocker / "e.duckdb")
    writer.link.lock_wait_s = 0.1
    assert not writer.flush()
    writer.locator = str(tmp_path / "e.duckdb")
    assert writer.flush() and writer.checked_batches == 2
    spool.append(_event("c"))
    assert writer.flush() and writer.checked_batches == 2
    assert [r[0] for r in _rows(tmp_path / "e.duckdb")] == ["a", "b", "c"]
    assert writer.stop()
    spool.close()


def test_a_plain_append_reads_no_ids_from_the_files(tmp_path: Path) -> None:
    """The spool knows what it wrote: a plain append parses each segment once (the
    insert); segments it cannot vouch for (a line without ts, left by another process)
    are read for their ids first, and everything still goes in once."""
    db = tmp_path / "e.duckdb"
    spool = Spool(tmp_path / "spool")
    writer = SpoolWriter(spool, str(db))
    spool.append(_event("a"))
    assert writer.flush() and (writer.checked_batches, writer.id_reads) == (1, 1)
    for event_id in ("b", "c", "d"):
        spool.append(_event(event_id))
    spool.seal()
    spool.append(_event("e"))
    assert writer.flush() and (writer.checked_batches, writer.id_reads) == (1, 1)
    spool.append(_event("f"))
    spool.append({"event_id": "no-ts"})  # not an event; the spool cannot vouch for its line
    assert writer.flush() and (writer.checked_batches, writer.id_reads) == (1, 2)
    spool.append(_event("b"))  # known, but committed a moment ago: checked
    assert writer.flush() and (writer.checked_batches, writer.id_reads) == (2, 3)
    assert [r[0] for r in _rows(db)] == ["a", "b", "c", "d", "e", "f"]
    assert writer.inserted == 6
    assert writer.stop()
    spool.close()


def test_a_store_file_removed_or_replaced_while_held_is_attached_again(
    tmp_path: Path, caplog: Any
) -> None:
    """The writer holds the file between flushes; deleted (or another file moved over it),
    every later commit went to the old inode, which no one can read: all lost, silently."""
    db = tmp_path / "e.duckdb"
    spool = Spool(tmp_path / "spool")
    writer = SpoolWriter(spool, str(db))
    spool.append(_event("first"))
    assert writer.flush(hold=True) and writer.link.holds_file
    db.unlink()
    db.with_name(db.name + ".wal").unlink(missing_ok=True)
    spool.append(_event("after-delete"))
    assert writer.flush(hold=True)
    assert "was removed or replaced while the proxy held it" in caplog.text
    other = tmp_path / "other.duckdb"
    with store(other) as con:
        con.execute("CREATE TABLE unrelated (x INTEGER)")
    other.rename(db)  # replaced by another DuckDB file
    spool.append(_event("after-replace"))
    assert writer.flush(hold=True)
    writer.link.close()
    assert [r[0] for r in _rows(db)] == ["after-replace"]
    assert writer.link.attaches == 3
    spool.close()


def test_a_line_from_an_older_proxy_stores_its_missing_column_as_its_default(
    tmp_path: Path,
) -> None:
    """``cache_write_1h_tokens`` came later: a line written without it (a spool left by an
    older proxy) is stored with 0, never NULL (sums and rate cards would skip a NULL), on
    the plain append and on the checked insert alike."""
    db = tmp_path / "e.duckdb"
    spool = Spool(tmp_path / "spool")
    writer = SpoolWriter(spool, str(db))
    spool.append(_event("old"))  # no cache_write_1h_tokens
    spool.append(_event("new", cache_write_1h_tokens=700))
    assert writer.flush()
    writer._may_repeat_store = True  # the next batch is checked against the store
    spool.append(_event("old-2"))
    assert writer.flush() and writer.checked_batches >= 1
    with store(db, read_only=True) as con:
        rows = con.execute(
            "SELECT event_id, cache_write_1h_tokens FROM usage_events ORDER BY 1"
        ).fetchall()
    assert rows == [("new", 700), ("old", 0), ("old-2", 0)]
    spool.close()


def test_a_line_from_before_audio_tokens_stores_them_as_0(tmp_path: Path) -> None:
    """``audio_input_tokens`` and ``audio_output_tokens`` came later still: a spool line
    without them (an older proxy's, audio inside input and output) is stored with 0."""
    db = tmp_path / "e.duckdb"
    spool = Spool(tmp_path / "spool")
    writer = SpoolWriter(spool, str(db))
    spool.append(_event("old"))
    spool.append(_event("new", audio_input_tokens=44, audio_output_tokens=139))
    assert writer.flush()
    with store(db, read_only=True) as con:
        rows = con.execute(
            "SELECT event_id, input_tokens, audio_input_tokens, audio_output_tokens "
            "FROM usage_events ORDER BY 1"
        ).fetchall()
    assert rows == [("new", 10, 44, 139), ("old", 10, 0, 0)]
    spool.close()
