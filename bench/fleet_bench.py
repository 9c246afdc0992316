"""Fleet load test: k proxies' writers committing to one DuckLake, with maintenance, then billing.

What grows a lake is the number of commits, not the wall time, so the month is simulated
by commits: each of ``--proxies`` writers (the real ``SpoolWriter``, one thread each, its
own spool and held lake connection) commits ``--commits`` batches of ``--events`` events
(a proxy at ``events`` requests/s flushing every second) as fast as it can; every
``--maintain-every`` commits of the fleet one maintenance pass runs (the proxies' own
``LakeMaintainer`` under the lease, at the same time as the writers). A real month at
1 flush/s is 2,592,000 commits per proxy: the lake's shape after a pass (files,
snapshots) does not depend on how many commits came before it, only on the data volume
and the commits since the last pass, which this run reproduces.

Reported: data files, snapshots, catalog size (PostgreSQL database size), flush wall
time p50/p99 (ingest lag = flush interval + queueing + flush), writer CPU per event with
PostgreSQL's CPU counted, failed flushes, maintenance pass times, then ``billing usage``
and ``billing invoice generate`` wall times on the lake.

Usage::

    .venv/bin/python bench/fleet_bench.py --proxies 10 --commits 300 --events 100
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from addons.metering.lakejob import LakeMaintainer  # noqa: E402
from addons.metering.spool import Spool  # noqa: E402
from addons.metering.writer import SpoolWriter  # noqa: E402
from bench.billing_bench import write_catalog  # noqa: E402
from bench.writer_bench import _postgres_cpu_s  # noqa: E402
from meterline.lakemaint import lake_counts  # noqa: E402
from meterline.store import store  # noqa: E402
from tests.support.postgres import postgres_server  # noqa: E402


def _event(proxy: int, n: int, customers: int) -> dict[str, object]:
    return {
        "event_id": f"openai:{uuid.uuid4()}", "ts": f"2026-03-{1 + n % 28:02d}T12:00:00",
        "consumer": f"agent-{(n * 7 + proxy) % customers:04d}", "key_fingerprint": None,
        "provider": "openai", "flavor": "openai", "model": "gpt-4o-2024-08-06",
        "input_tokens": 1000 + n % 500, "cached_input_tokens": n % 100,
        "cache_write_tokens": 0, "output_tokens": 200 + n % 300, "reasoning_tokens": 0,
        "estimated": False, "response_id": None, "request_id": None, "method": "POST",
        "host": "api.openai.com", "path": "/v1/chat/completions", "status": 200,
        "streamed": False, "latency_ms": 1.0, "ttft_ms": 1.0, "proxy_id": f"p{proxy}",
    }  # fmt: skip


def _catalog_bytes(conninfo: str) -> int:
    psql = sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))[-1]
    out = subprocess.run(
        [str(psql), conninfo, "-Atc", "SELECT pg_database_size(current_database())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proxies", type=int, default=10)
    ap.add_argument("--commits", type=int, default=300, help="commits per proxy")
    ap.add_argument("--events", type=int, default=100, help="events per commit")
    ap.add_argument("--maintain-every", type=int, default=1000, help="fleet commits per pass")
    ap.add_argument("--customers", type=int, default=100)
    ap.add_argument("--inline-rows", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="meterline-fleet-") as tmp, postgres_server() as pg:
        work = Path(tmp)
        os.environ["METERLINE_LAKE_DATA"] = str(work / "lake-data")
        os.environ["METERLINE_LAKE_INLINE_ROWS"] = str(args.inline_rows)
        os.environ["METERLINE_LAKE_MAINTAIN_EVERY"] = "0"  # passes driven below
        lake = f"ducklake:postgres:{pg}"
        writers = []
        for p in range(args.proxies):
            spool = Spool(work / f"spool-{p}")
            writers.append((spool, SpoolWriter(spool, lake)))
        flush_s: list[float] = []
        cpu_s = [0.0]
        commits = [0]
        lock = threading.Lock()

        def run(p: int) -> None:
            spool, writer = writers[p]
            for c in range(args.commits):
                for k in range(args.events):
                    spool.append(_event(p, c * args.events + k, args.customers))
                c0, t0 = time.thread_time(), time.perf_counter()
                writer.flush(hold=True)
                with lock:
                    flush_s.append(time.perf_counter() - t0)
                    cpu_s[0] += time.thread_time() - c0
                    commits[0] += 1

        maintainer = LakeMaintainer(lake, every_s=0, holder="fleet-bench")
        passes: list[float] = []
        done = threading.Event()

        def maintain_loop() -> None:
            next_at = args.maintain_every
            while not done.is_set():
                if commits[0] >= next_at:
                    next_at += args.maintain_every
                    started = time.perf_counter()
                    if maintainer.run_once() is not None:
                        passes.append(time.perf_counter() - started)
                done.wait(0.05)

        pg0 = _postgres_cpu_s()
        started = time.perf_counter()
        threads = [threading.Thread(target=run, args=(p,)) for p in range(args.proxies)]
        loop = threading.Thread(target=maintain_loop)
        loop.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        loop.join()
        wall = time.perf_counter() - started
        pg_cpu = _postgres_cpu_s() - pg0
        failures = sum(w.failures for _, w in writers)
        for spool, writer in writers:
            writer.stop()
            spool.close()
        with store(lake) as con:
            files_before, snapshots_before = lake_counts(con)
            (events,) = con.execute("SELECT count(*) FROM usage_events").fetchone() or (0,)
        maintainer.run_once()  # the state a proxy's pass leaves
        with store(lake) as con:
            files, snapshots = lake_counts(con)
        catalog = work / "catalog.yaml"
        write_catalog(catalog, args.customers)
        billing = [str(Path(sys.executable).parent / "billing"), "--db", lake]
        billing += ["--catalog", str(catalog)]
        times = {}
        for name, cmd in (
            ("usage", ["usage", "--format", "json"]),
            ("invoice_generate", ["invoice", "generate", "--period", "2026-03", "--settle", "0"]),
        ):
            t0 = time.perf_counter()
            subprocess.run([*billing, *cmd], check=True, stdout=subprocess.DEVNULL)
            times[f"billing_{name}_s"] = round(time.perf_counter() - t0, 2)
        flush_ms = sorted(x * 1000 for x in flush_s)
        report = {
            "proxies": args.proxies,
            "commits": commits[0],
            "events": events,
            "wall_s": round(wall, 1),
            "failed_flushes": failures,
            "flush_ms_p50": round(statistics.median(flush_ms), 1),
            "flush_ms_p99": round(flush_ms[int(len(flush_ms) * 0.99) - 1], 1),
            "writer_cpu_us_per_event": round(cpu_s[0] / max(events, 1) * 1e6, 1),
            "postgres_cpu_us_per_event": round(pg_cpu / max(events, 1) * 1e6, 1),
            "maintenance_passes": len(passes),
            "maintenance_pass_s_max": round(max(passes), 2) if passes else None,
            "files_before_last_pass": files_before,
            "snapshots_before_last_pass": snapshots_before,
            "files": files,
            "snapshots": snapshots,
            "catalog_mb": round(_catalog_bytes(pg) / 1e6, 1),
            **times,
        }
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
