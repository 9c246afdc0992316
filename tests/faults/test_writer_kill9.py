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
from pathlib import Path

import pytest

from meterline.store import store
from tests.support.postgres import postgres_server

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 3000
#: Seconds after the child is ready at which it is killed: spread over its flush cycle.
KILL_AFTER_S = (0.05, 0.13, 0.21, 0.3, 0.42, 0.55)

CHILD = """
import json, sys, time
from pathlib import Path
from addons.metering.spool import Spool
from addons.metering.writer import SpoolWriter
from meterline.store import store
from meterline.migrations import EVENT_MIGRATIONS, migrate

spool_dir, locator, total = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])

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
        time.sleep(0.003)  # a proxy's traffic, not one burst
assert writer.stop()
spool.close()
print("done", flush=True)
"""


def _child(spool: Path, locator: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(spool), locator, str(EVENTS)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "METERLINE_LAKE_MAINTAIN_EVERY": "0"},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _kill_loop(spool: Path, locator: str) -> Counter[str]:
    for delay in KILL_AFTER_S:
        proc = _child(spool, locator)
        time.sleep(delay)
        proc.kill()  # SIGKILL: the spool and the store are all that is left
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()
    proc = _child(spool, locator)
    assert proc.stdout is not None
    with proc.stdout:  # "done" may already sit in the buffer that held "ready"
        out = proc.stdout.read()
    assert proc.wait(timeout=120) == 0 and out.strip() == "done"
    with store(locator) as con:
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
