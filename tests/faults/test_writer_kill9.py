"""kill -9 of a busy writer, again and again, on a DuckDB file and on a DuckLake.

A normal flush is a plain append (no look at the store's event ids); only the first
batch of a writer and a batch after a failed flush are checked against the store. These
tests prove that this keeps every event exactly once: a child process appends numbered
events to its spool while its writer flushes every few milliseconds, and is killed
(SIGKILL) at points spread over its flushes, then restarted where it left off; at the end
every number is in the store exactly once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from meterline import lakestage
from meterline.lakestage import staged_reads
from meterline.store import store
from tests.support.postgres import postgres_server

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 3000
#: Seconds after the child is ready at which it is killed: spread over its flush cycle.
KILL_AFTER_S = (0.05, 0.13, 0.21, 0.3, 0.42, 0.55)
STAGED_KILL_AFTER_S = (0.4, 0.55, 0.7, 0.85, 1.0, 1.2)

CHILD = """
import json, sys, time
from pathlib import Path
from addons.metering.spool import Spool
from addons.metering.writer import SpoolWriter
from meterline.store import store
from meterline.lakestage import staged_reads
from meterline.migrations import EVENT_MIGRATIONS, migrate

spool_dir, locator, total = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
PACE_S = float(sys.argv[4])

def number(event_id):
    return int(event_id.rsplit("-", 1)[1])

done = -1  # the highest number already appended (in the spool) or stored
for path in spool_dir.glob("meterline-*"):
    if path.name.endswith((".open", ".jsonl")):
        for line in path.read_bytes().splitlines():
            try:
                done = max(done, number(json.loads(line)["event_id"]))
            except (ValueError, KeyError, TypeError):
                pass  # a line torn by the kill: appended again below
with store(locator) as con:
    migrate(con, EVENT_MIGRATIONS)
with store(locator) as con, staged_reads(con, locator):
    row = con.execute("SELECT max(event_id) FROM usage_events").fetchone()
    if row and row[0]:
        done = max(done, number(row[0]))
spool = Spool(spool_dir)
writer = SpoolWriter(spool, locator, interval=0.005)
writer.start()
print("ready", flush=True)
for n in range(done + 1, total):
    spool.append({
        "event_id": f"ml:kill-{n:06d}", "ts": "2026-03-01T12:00:00", "consumer": "alice",
        "provider": "openai", "flavor": "openai", "model": "gpt-4o", "input_tokens": 1,
        "cached_input_tokens": 0, "cache_write_tokens": 0, "output_tokens": 1,
        "reasoning_tokens": 0, "estimated": False, "method": "POST", "host": "h",
        "path": "/v1/chat/completions", "status": 200, "streamed": False,
    })
    if n % 50 == 0:
        time.sleep(PACE_S)  # a proxy's traffic, not one burst
assert writer.stop()
spool.close()
print("done", flush=True)
"""


def _child(spool: Path, locator: str, pace_s: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(spool), locator, str(EVENTS), str(pace_s)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "METERLINE_LAKE_MAINTAIN_EVERY": "0",
            "METERLINE_LAKE_MOVE_EVERY": "0.1",  # with METERLINE_LAKE_INGEST=staged
        },
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _kill_loop(
    spool: Path, locator: str, kill_after_s: tuple[float, ...] = KILL_AFTER_S, pace_s: float = 0.003
) -> Counter[str]:
    for delay in kill_after_s:
        proc = _child(spool, locator, pace_s)
        time.sleep(delay)
        proc.kill()  # SIGKILL: the spool and the store are all that is left
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()
    proc = _child(spool, locator, pace_s)
    assert proc.stdout is not None
    with proc.stdout:  # "done" may already sit in the buffer that held "ready"
        out = proc.stdout.read()
    assert proc.wait(timeout=120) == 0 and out.strip() == "done"
    with store(locator) as con, staged_reads(con, locator):
        return Counter(r[0] for r in con.execute("SELECT event_id FROM usage_events").fetchall())


def _check(counts: Counter[str]) -> None:
    expected = {f"ml:kill-{n:06d}" for n in range(EVENTS)}
    lost = expected - set(counts)
    doubled = {k: c for k, c in counts.items() if c > 1}
    print(f"writer kill-9 x{len(KILL_AFTER_S)}: lost={len(lost)} doubled={len(doubled)}")
    assert lost == set() and doubled == {} and set(counts) == expected


def test_kill_9_of_a_file_writer_loses_and_doubles_nothing(tmp_path: Path) -> None:
    _check(_kill_loop(tmp_path / "spool", str(tmp_path / "e.duckdb")))


@pytest.fixture(scope="module")
def lake_server() -> Iterator[str]:
    with postgres_server() as conninfo:
        yield conninfo


def test_kill_9_of_a_lake_writer_loses_and_doubles_nothing(
    tmp_path: Path, lake_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METERLINE_LAKE_DATA", str(tmp_path / "lake-data"))
    _check(_kill_loop(tmp_path / "spool", f"ducklake:postgres:{lake_server}"))


def test_kill_9_of_a_staging_lake_writer_loses_and_doubles_nothing(
    tmp_path: Path, lake_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``METERLINE_LAKE_INGEST=staged``: flushes stage their lines, a mover moves them
    every ~0.1 s; the kills land in stages, in moves and between. Counted through the
    staged view (lake + lines not moved yet), and once more after a last move."""
    from tests.support.postgres import create_database

    monkeypatch.setenv("METERLINE_LAKE_DATA", str(tmp_path / "lake-data"))
    monkeypatch.setenv("METERLINE_LAKE_INGEST", "staged")
    locator = "ducklake:postgres:" + create_database(lake_server, "kill_staged")
    # Slower traffic, later kills: the writer and its mover attach first (~0.3 s each),
    # so that kills land in stages and in moves.
    _check(_kill_loop(tmp_path / "spool", locator, STAGED_KILL_AFTER_S, pace_s=0.02))
    # Then one last move, here: the lake's own table holds every event once, and the
    # view (lake + staged lines not moved) still counts each once.
    with store(locator) as con, closing(lakestage.connect(locator)) as pg:
        work = tmp_path / "move"
        work.mkdir(mode=0o700)
        lakestage.move(con, pg, work)
        moved = Counter(
            r[0] for r in con.execute("SELECT event_id FROM lake.main.usage_events").fetchall()
        )
        moves = con.execute("SELECT count(*) FROM staged_moves").fetchone()
    print(f"staged: {moves} moves in all")
    _check(moved)
    with store(locator) as con, staged_reads(con, locator):
        _check(Counter(r[0] for r in con.execute("SELECT event_id FROM usage_events").fetchall()))
