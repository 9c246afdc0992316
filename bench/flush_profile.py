"""Where a flush's CPU goes: the writer's insert, step by step, on a file and on a lake.

Runs a flush's statements one at a time on the writer's held connection
(:class:`addons.metering.storelink.StoreLink`) and times each, three ways: before (every
batch checked against the store: :func:`addons.metering.batchsql.insert_segments`: the
segment into a temp table, a survey, the insert with its anti-join against the events
stored in the dedup window, the commit), then (the ids read from the segment for the
in-memory check, then a plain append: :func:`addons.metering.batchsql.append_segments`,
still the way for segments a previous process left) and now (the spool knows the ids:
one statement, :func:`addons.metering.batchsql.append_known`). The store first receives
``--prefill`` flushes of recent events (what a store holds within the dedup window: one
proxy's last minutes, or on a lake ten proxies' uncompacted files). On a lake, the
PostgreSQL server's CPU per flush is counted (from ``/proc``), and the statements PostgreSQL ran per
commit (its ``log_statement = 'all'`` log) are counted once.

Usage::

    .venv/bin/python bench/flush_profile.py --events 50 --flushes 20 --prefill 300 --lake
    .venv/bin/python bench/flush_profile.py --events 100 --flushes 30 --lake --gap-ms 200
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

from addons.metering.batchsql import (  # noqa: E402
    _READ_OPTIONS,
    _SURVEY,
    APPEND_SQL,
    INSERT_SQL,
    Batch,
    append_known,
    event_times,
    read_batch,
)
from addons.metering.recentids import RecentIds  # noqa: E402
from addons.metering.spool import Spool  # noqa: E402
from addons.metering.storelink import StoreLink  # noqa: E402
from bench.writer_bench import _postgres_cpu_s  # noqa: E402
from meterline.sqltext import sql_string  # noqa: E402


def _event(i: int) -> dict[str, object]:
    now = datetime.now(UTC).replace(tzinfo=None).isoformat()
    return {
        "event_id": f"openai:{uuid.uuid4()}", "ts": now, "consumer": f"c{i % 50}",
        "key_fingerprint": "sha256:" + "0" * 64, "provider": "openai", "flavor": "openai",
        "model": "gpt-4o", "input_tokens": 1000 + i, "cached_input_tokens": 0,
        "cache_write_tokens": 0, "output_tokens": 200, "reasoning_tokens": 0,
        "estimated": False, "response_id": None, "request_id": f"r{i}", "method": "POST",
        "host": "api.openai.com", "path": "/v1/chat/completions", "status": 200,
        "streamed": False, "latency_ms": 12.5, "ttft_ms": 3.0, "proxy_id": "p1",
    }  # fmt: skip


class Steps:
    """Writer-thread CPU and wall time per named step (medians over flushes)."""

    def __init__(self) -> None:
        self.cpu: dict[str, list[float]] = {}
        self.wall: dict[str, list[float]] = {}

    def run(self, name: str, fn: Callable[[], object]) -> None:
        c0, t0 = time.thread_time(), time.perf_counter()
        fn()
        self.cpu.setdefault(name, []).append(time.thread_time() - c0)
        self.wall.setdefault(name, []).append(time.perf_counter() - t0)

    def report(self) -> dict[str, dict[str, float]]:
        return {
            name: {
                "cpu_ms": round(statistics.median(self.cpu[name]) * 1000, 2),
                "wall_ms": round(statistics.median(self.wall[name]) * 1000, 2),
            }
            for name in self.cpu
        }


def _ingested() -> str:
    return "TIMESTAMP '" + datetime.now(UTC).replace(tzinfo=None).isoformat(" ") + "'"


def _before(con: duckdb.DuckDBPyConnection, segment: Path, steps: Steps) -> None:
    """The flush before this change: every batch checked against the store."""
    steps.run("begin", lambda: con.execute("BEGIN TRANSACTION"))
    steps.run(
        "read segment -> temp table",
        lambda: con.execute(
            "CREATE OR REPLACE TEMP TABLE spool_batch AS SELECT * FROM "
            f"read_json([{sql_string(str(segment))}], {_READ_OPTIONS})"
        ),
    )
    since: list[object] = []
    steps.run("survey", lambda: since.append((con.execute(_SURVEY).fetchone() or (0, None))[1]))
    sql = INSERT_SQL.replace("$ingested_at", _ingested()).replace("$keyed", "")
    sql = sql.replace("$since", f"TIMESTAMP '{since[0]}'")
    steps.run("insert: dedup window + anti-join + Parquet", lambda: con.execute(sql))
    steps.run("drop temp", lambda: con.execute("DROP TABLE spool_batch"))
    steps.run("commit", lambda: con.execute("COMMIT"))


def _ids_read(con: duckdb.DuckDBPyConnection, segment: Path, steps: Steps) -> None:
    """The flush before the spool knew its ids: ids read for the in-memory check, then a
    plain append (still the way for segments a previous process left)."""
    batch: list[Batch] = []
    steps.run("begin", lambda: con.execute("BEGIN TRANSACTION"))
    steps.run("read ids + ts (in-memory check)", lambda: batch.append(read_batch(con, [segment])))
    steps.run("check against recent ids", lambda: RecentIds().repeats(batch[0].events))
    sql = APPEND_SQL.replace("$files", f"[{sql_string(str(segment))}]")
    sql = sql.replace("$ingested_at", _ingested())
    steps.run("insert: read segment + Parquet", lambda: con.execute(sql))
    steps.run("commit", lambda: con.execute("COMMIT"))


def _known(con: duckdb.DuckDBPyConnection, segment: Path, steps: Steps, spool: Spool) -> None:
    """The flush now: the spool knows the ids; one statement reads, writes and commits."""

    def check() -> None:
        keys = spool.known_events([segment])
        assert keys is not None
        RecentIds().repeats(event_times(keys) or [])

    steps.run("ids from the spool + check", check)
    steps.run("insert: read segment + Parquet + commit", lambda: append_known(con, [segment]))


def profile(
    locator: str, work: Path, events: int, flushes: int, prefill: int, gap_s: float = 0.0
) -> dict[str, object]:
    lake = locator.startswith("ducklake:")
    link = StoreLink(locator)
    con = link.connection()
    spool = Spool(work / f"spool-{uuid.uuid4().hex[:6]}")

    def segment() -> Path:
        for i in range(events):
            spool.append(_event(i))
        spool.seal()
        [path] = spool.sealed()
        return path

    for _ in range(prefill):  # the store's last minutes: what the dedup window holds
        path = segment()
        _known(con, path, Steps(), spool)
        path.unlink()
    result: dict[str, object] = {}
    ways = (
        ("before: every batch checked", _before),
        ("then: ids read, plain append", _ids_read),
        ("now: ids known, plain append", lambda c, p, st: _known(c, p, st, spool)),
    )
    for name, way in ways:
        steps = Steps()
        cpu = pg = kernel = 0.0
        faults = 0
        for _ in range(flushes):
            path = segment()
            time.sleep(gap_s)
            p0 = _postgres_cpu_s() if lake else 0.0
            r0, c0 = resource.getrusage(resource.RUSAGE_THREAD), time.thread_time()
            way(con, path, steps)
            c1, r1 = time.thread_time(), resource.getrusage(resource.RUSAGE_THREAD)
            pg += (_postgres_cpu_s() - p0) if lake else 0.0
            cpu += c1 - c0
            kernel += r1.ru_stime - r0.ru_stime
            faults += r1.ru_minflt - r0.ru_minflt
            path.unlink()
        result[name] = {
            "steps (median ms)": steps.report(),
            "writer_cpu_ms_per_flush": round(cpu / flushes * 1000, 2),
            "of_it_kernel_ms_per_flush": round(kernel / flushes * 1000, 2),
            "minor_page_faults_per_flush": round(faults / flushes, 1),
            "postgres_cpu_ms_per_flush": round(pg / flushes * 1000, 2),
            "cpu_us_per_event_incl_postgres": round((cpu + pg) / flushes / events * 1e6, 1),
        }
    spool.close()
    link.close()
    return result


def _statements_per_commit(conninfo: str, locator: str, work: Path) -> int:
    """PostgreSQL statements one held-connection flush sends (counted from its log)."""
    psql = sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))[-1]

    def sql(text: str) -> str:
        out = subprocess.run([str(psql), conninfo, "-Atc", text], capture_output=True, text=True)
        return out.stdout.strip()

    log = Path(sql("SHOW data_directory")).parent / "postgres.log"
    sql("ALTER SYSTEM SET log_statement = 'all'")
    sql("SELECT pg_reload_conf()")
    time.sleep(0.5)
    link = StoreLink(locator)
    con = link.connection()
    spool = Spool(work / "spool-count")
    for i in range(10):
        spool.append(_event(i))
    spool.seal()
    [segment] = spool.sealed()
    before = log.read_text(errors="replace").count("LOG:  statement:")
    _known(con, segment, Steps(), spool)
    time.sleep(0.2)
    after = log.read_text(errors="replace").count("LOG:  statement:")
    sql("ALTER SYSTEM RESET log_statement")
    sql("SELECT pg_reload_conf()")
    spool.close()
    link.close()
    return after - before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=50)
    ap.add_argument("--flushes", type=int, default=20)
    ap.add_argument("--prefill", type=int, default=300, help="flushes stored beforehand")
    ap.add_argument("--lake", action="store_true")
    ap.add_argument("--gap-ms", type=float, default=0.0, help="sleep between flushes")
    args = ap.parse_args()
    gap_s = args.gap_ms / 1000
    out: dict[str, object] = {
        "events": args.events,
        "prefill_flushes": args.prefill,
        "gap_ms": args.gap_ms,
    }
    with tempfile.TemporaryDirectory(prefix="meterline-flush-profile-") as tmp:
        work = Path(tmp)
        out["file"] = profile(
            str(work / "e.duckdb"), work, args.events, args.flushes, args.prefill, gap_s
        )
        if args.lake:
            from tests.support.postgres import postgres_server

            os.environ["METERLINE_LAKE_DATA"] = str(work / "lake-data")
            with postgres_server() as pg:
                lake = f"ducklake:postgres:{pg}"
                out["lake"] = profile(lake, work, args.events, args.flushes, args.prefill, gap_s)
                out["lake_postgres_statements_per_flush"] = _statements_per_commit(pg, lake, work)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
