"""Benchmark: the writer's CPU per flush, old way against new, side by side in one run.

Each flush writes one spool segment of ``--events`` events (the load of one proxy at that
many requests per flush interval). Measured in this process (thread CPU time of the
flushing thread, wall time) over ``--flushes`` flushes per way:

- ``file, open+close per flush``: the writer before this change (a new DuckDB instance
  per batch, the file checkpointed on close);
- ``file, held (writer loop)``: the writer now, flushing with ``hold=True`` as its loop
  does while events keep coming (attached once, no checkpoint per flush; a normal
  flush is a plain append; measured after one warm-up flush, which attaches the store
  and is the writer's one batch checked against the store's ids);
- ``file, attach+detach per flush``: a direct ``flush()``, which frees the file after;
- with ``--lake``: a DuckLake on a throwaway PostgreSQL (``tests/support/postgres.py``),
  old way (a fresh instance + attach per flush) against the held link, with PostgreSQL's
  CPU per flush (from ``/proc``) counted too.

Usage::

    .venv/bin/python bench/writer_bench.py --events 50 --flushes 40 --lake
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from addons.metering.batchsql import insert_segments  # noqa: E402
from addons.metering.spool import Spool  # noqa: E402
from addons.metering.writer import SpoolWriter  # noqa: E402
from meterline.migrations import EVENT_MIGRATIONS, migrate  # noqa: E402
from meterline.store import store  # noqa: E402


def _event(i: int) -> dict[str, object]:
    return {
        "event_id": f"ml:{uuid.uuid4()}", "ts": "2026-03-01T12:00:00.000001",
        "consumer": "alice", "key_fingerprint": "sha256:" + "0" * 64, "provider": "openai",
        "flavor": "openai", "model": "gpt-4o", "input_tokens": 10 + i,
        "cached_input_tokens": 0, "cache_write_tokens": 0, "output_tokens": 5,
        "reasoning_tokens": 0, "estimated": False, "response_id": None, "request_id": f"r{i}",
        "method": "POST", "host": "api.openai.com", "path": "/v1/chat/completions",
        "status": 200, "streamed": False, "latency_ms": 12.5, "ttft_ms": 3.0, "proxy_id": "p1",
    }  # fmt: skip


def _postgres_cpu_s() -> float:
    """CPU seconds of the PostgreSQL servers this process started (``postgres_server``).

    The postmaster's own time plus its reaped backends' (cutime, cstime), plus the time of
    its live backends; other PostgreSQL servers on the machine are not counted.
    """
    tick = os.sysconf("SC_CLK_TCK")
    procs: dict[int, tuple[int, str, list[int]]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        procs[int(pid)] = (int(fields[1]), name, [int(x) for x in fields[11:15]])

    def mine(pid: int) -> bool:
        for _ in range(10):  # postgres <- runuser <- this process
            parent = procs.get(pid, (0, "", []))[0]
            if parent == os.getpid():
                return True
            if parent <= 1:
                return False
            pid = parent
        return False

    total = 0
    for pid, (ppid, name, times) in procs.items():
        if not name.startswith("postgres") or not mine(pid):
            continue
        is_postmaster = not procs.get(ppid, (0, "", []))[1].startswith("postgres")
        total += sum(times) if is_postmaster else times[0] + times[1]
    return total / tick


def _measure(
    flushes: int, events: int, spool: Spool, flush: Callable[[], None]
) -> dict[str, float]:
    cpu = wall = pg = 0.0
    for _ in range(flushes):
        for i in range(events):
            spool.append(_event(i))
        spool.seal()
        # PostgreSQL's CPU first: reading it scans /proc (~2 ms), which must not count
        # as the writer's (it did until 5 December: ~2.3 ms more per flush)
        p0 = _postgres_cpu_s()
        c0, t0 = time.thread_time(), time.perf_counter()
        flush()
        cpu += time.thread_time() - c0
        wall += time.perf_counter() - t0
        pg += _postgres_cpu_s() - p0
    return {
        "cpu_ms_per_flush": round(cpu / flushes * 1000, 2),
        "wall_ms_per_flush": round(wall / flushes * 1000, 2),
        "postgres_cpu_ms_per_flush": round(pg / flushes * 1000, 2),
        "cpu_us_per_event": round((cpu + pg) / flushes / events * 1e6, 1),
    }


def _old_flush(spool: Spool, locator: str) -> Callable[[], None]:
    def flush() -> None:
        segments = spool.sealed()
        with store(locator) as con:
            con.execute("SET threads = 1")
            insert_segments(con, segments)
        for p in segments:
            p.unlink()

    return flush


def run(events: int, flushes: int, locator: str, work: Path, label: str) -> dict[str, object]:
    results: dict[str, object] = {}
    with store(locator) as con:
        migrate(con, EVENT_MIGRATIONS)
    spool = Spool(work / f"spool-{label}")
    try:
        results[f"{label}, open+close per flush (before)"] = _measure(
            flushes, events, spool, _old_flush(spool, locator)
        )
        writer = SpoolWriter(spool, locator)
        # Steady state: the attach (once per process) and the writer's first batch (checked
        # against the store: it may replay what a killed process committed) come first.
        _measure(1, events, spool, lambda: writer.flush(hold=True) and None)
        results[f"{label}, held (writer loop, now)"] = _measure(
            flushes, events, spool, lambda: writer.flush(hold=True) and None
        )
        if not locator.startswith("ducklake:"):
            results[f"{label}, attach+detach per flush (direct flush)"] = _measure(
                flushes, events, spool, lambda: writer.flush() and None
            )
        writer.stop()
    finally:
        spool.close()
    return results


def idle_cpu(work: Path, seconds: float) -> dict[str, float]:
    """CPU of an idle writer thread (nothing spooled) over ``seconds``, interval 1 s."""
    spool = Spool(work / "spool-idle")
    writer = SpoolWriter(spool, str(work / "idle.duckdb"), interval=1.0)
    writer.start()
    time.sleep(0.2)
    assert writer._thread is not None and writer._thread.ident is not None
    clock = time.pthread_getcpuclockid(writer._thread.ident)
    c0 = time.clock_gettime(clock)
    time.sleep(seconds)
    used = time.clock_gettime(clock) - c0
    writer.stop()
    spool.close()
    return {"idle_writer_cpu_ms_per_s": round(used / seconds * 1000, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50, help="events per flush")
    parser.add_argument("--flushes", type=int, default=40, help="flushes per way")
    parser.add_argument("--lake", action="store_true", help="also a DuckLake on PostgreSQL")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meterline-writer-bench-") as tmp:
        work = Path(tmp)
        results: dict[str, object] = {"idle": idle_cpu(work, 10.0)}
        results |= run(args.events, args.flushes, str(work / "e.duckdb"), work, "file")
        if args.lake:
            from tests.support.postgres import postgres_server

            os.environ["METERLINE_LAKE_DATA"] = str(work / "lake-data")
            with postgres_server() as conninfo:
                results |= run(
                    args.events, args.flushes, f"ducklake:postgres:{conninfo}", work, "lake"
                )
    print(
        json.dumps({"events_per_flush": args.events, "flushes": args.flushes, **results}, indent=1)
    )


if __name__ == "__main__":
    main()
