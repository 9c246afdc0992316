"""Fleet load test: k proxies' writers on one DuckLake, with compaction, two ways.

``month`` (what shapes the lake): the commits, not the wall time. Ten proxies flushing
every second make 10 commits/s: 26M a month, and a maintenance pass every 600 s comes
every 6,000 fleet commits and keeps 10 minutes, i.e. 6,000 snapshots. This mode runs the
real ``SpoolWriter`` of each of ``--proxies`` proxies (one thread each, its own spool and
held lake connection) committing batches as fast as they can, a pass under the lease
every ``--maintain-every`` fleet commits that keeps the last ``--keep-snapshots``
snapshots (:func:`meterline.lakemaint.retention_cutoff`: retention by commits, since a
wall-clock "10 minutes" means nothing in compressed time), and samples data files,
snapshots and the catalog's size (``pg_database_size``) after every pass: a plateau that
does not grow with the commits is what a month would look like. Each writer first
attaches the lake and makes its first (checked) flush, one after another, before the
clock starts (``first_flush_ms_max``): a running fleet did that long ago, and ten
attaches at once, then every writer catching up at once, are not its steady flushes.
Flush times are also given apart for flushes that overlapped a pass. The writers are paced to
``--commits-per-s`` fleet commits (default 20, twice a real fleet's): unpaced, 10
writers made 35-60 commits/s here, and a merge, whose commit DuckLake retries until no
writer committed in between, could not get one in.

``rate`` (what a proxy sees): ``--proxies`` writers running their own loop
(``interval`` 1 s) while each gets ``--rate`` events per second, evenly, for
``--seconds``; a pass every ``--maintain-every-s`` seconds. Reported: ingest lag (event
appended -> its batch committed) p50/p99, flush wall p50/p99, the writers' thread CPU
and the PostgreSQL server's CPU (``/proc``) per event, failed flushes.

Usage::

    .venv/bin/python bench/fleet_bench.py month --proxies 10 --commits 40000 --events 20
    .venv/bin/python bench/fleet_bench.py rate --proxies 2 --rate 100 --seconds 120
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from addons.metering.lakejob import LakeMaintainer  # noqa: E402
from addons.metering.priority import MAINTENANCE_NICENESS, lower_thread_priority  # noqa: E402
from addons.metering.spool import Spool  # noqa: E402
from addons.metering.writer import SpoolWriter  # noqa: E402
from bench.billing_bench import write_catalog  # noqa: E402
from bench.writer_bench import _postgres_cpu_s  # noqa: E402
from meterline.lakemaint import lake_counts  # noqa: E402
from meterline.lakestage import staged_reads  # noqa: E402
from meterline.store import store  # noqa: E402
from tests.support.postgres import postgres_server  # noqa: E402


def _event(proxy: int, n: int, customers: int, ts: str | None = None) -> dict[str, object]:
    return {
        "event_id": f"openai:{uuid.uuid4()}", "ts": ts or f"2026-03-{1 + n % 28:02d}T12:00:00",
        "consumer": f"agent-{(n * 7 + proxy) % customers:04d}", "key_fingerprint": None,
        "provider": "openai", "flavor": "openai", "model": "gpt-4o-2024-08-06",
        "input_tokens": 1000 + n % 500, "cached_input_tokens": n % 100,
        "cache_write_tokens": 0, "output_tokens": 200 + n % 300, "reasoning_tokens": 0,
        "estimated": False, "response_id": None, "request_id": None, "method": "POST",
        "host": "api.openai.com", "path": "/v1/chat/completions", "status": 200,
        "streamed": False, "latency_ms": 1.0, "ttft_ms": 1.0, "proxy_id": f"p{proxy}",
    }  # fmt: skip


def _psql(conninfo: str, query: str) -> str:
    psql = sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))[-1]
    out = subprocess.run(
        [str(psql), conninfo, "-Atc", query], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def _catalog_bytes(conninfo: str) -> int:
    return int(_psql(conninfo, "SELECT pg_database_size(current_database())"))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 1) if ordered else 0.0


def _split_by_passes(
    flushes: list[tuple[float, float]], passes: list[tuple[float, float]]
) -> tuple[list[float], list[float]]:
    """Flush wall times in ms, those that overlapped a maintenance pass and the others."""
    during: list[float] = []
    outside: list[float] = []
    for t0, t1 in flushes:
        overlaps = any(t0 < p1 and p0 < t1 for p0, p1 in passes)
        (during if overlaps else outside).append((t1 - t0) * 1000)
    return during, outside


def _largest_tables(conninfo: str, n: int = 4) -> str:
    """The catalog's largest tables: name, live and dead rows, (auto)vacuums so far, MB
    (where a growing catalog grows, and whether PostgreSQL keeps up with the churn)."""
    query = (
        "SELECT relname || ' ' || n_live_tup || ' rows ' || n_dead_tup || ' dead ' || "
        "autovacuum_count || ' autovacuums ' || vacuum_count || ' vacuums ' || "
        "round(pg_total_relation_size(relid) / 1e6, 1) || ' MB' FROM pg_stat_user_tables "
        f"ORDER BY pg_total_relation_size(relid) DESC LIMIT {n}"
    )
    return "; ".join(_psql(conninfo, query).splitlines())


def _lake_state(lake: str, pg: str) -> dict[str, float | str]:
    with store(lake) as con:
        files, snapshots = lake_counts(con)
    return {
        "files": files,
        "snapshots": snapshots,
        "catalog_mb": _catalog_bytes(pg) / 1e6,
        "largest_tables": _largest_tables(pg),
    }


def month(args: argparse.Namespace, lake: str, pg: str, work: Path) -> dict[str, object]:
    writers = []
    for p in range(args.proxies):
        spool = Spool(work / f"spool-{p}")
        writers.append((spool, SpoolWriter(spool, lake)))
    flush_spans: list[tuple[float, float]] = []
    pass_spans: list[tuple[float, float]] = []
    cpu_s = [0.0]
    commits = [0]
    lock = threading.Lock()
    stop = threading.Event()

    def warm_up(p: int) -> float:
        """A proxy's first flush: it attaches the lake and checks its first batch against
        the lake (it may replay what a killed process committed). A running fleet made it
        long ago, so it is timed apart from the steady flushes; the writers make it one
        after another, as proxies started at different times do."""
        spool, writer = writers[p]
        for i in range(args.events):
            spool.append(_event(p, i, args.customers))
        t0 = time.perf_counter()
        writer.flush(hold=True)
        commits[0] += 1
        return (time.perf_counter() - t0) * 1000

    def run(p: int) -> None:
        spool, writer = writers[p]
        n = args.events
        period = args.proxies / args.commits_per_s if args.commits_per_s else 0.0
        due = time.monotonic() + period * p / args.proxies
        while not stop.is_set():
            due += period
            if due > time.monotonic():
                time.sleep(due - time.monotonic())
            for _ in range(args.events):
                spool.append(_event(p, n, args.customers))
                n += 1
            c0, t0 = time.thread_time(), time.perf_counter()
            writer.flush(hold=True)
            t1 = time.perf_counter()
            with lock:
                flush_spans.append((t0, t1))
                cpu_s[0] += time.thread_time() - c0
                commits[0] += 1
                if commits[0] >= args.commits:
                    stop.set()

    maintainer = LakeMaintainer(lake, every_s=0, holder="fleet-bench")
    samples: list[dict[str, Any]] = []
    failed_passes: list[str] = []

    def maintain_loop() -> None:
        lower_thread_priority(MAINTENANCE_NICENESS)  # as a proxy's maintainer thread
        next_at = args.maintain_every
        while not stop.is_set():
            if commits[0] >= next_at:
                next_at = commits[0] + args.maintain_every
                at = commits[0]
                pass_started = time.perf_counter()
                try:
                    report = maintainer.run_once(
                        keep_snapshots=args.keep_snapshots, max_compacted_files=args.merge_files
                    )
                except Exception as e:  # a proxy's maintainer logs it and tries later
                    pass_spans.append((pass_started, time.perf_counter()))
                    failed_passes.append(f"{at}: {str(e)[:200]}")
                    print(failed_passes[-1], file=sys.stderr, flush=True)
                    continue
                seconds = time.perf_counter() - pass_started
                pass_spans.append((pass_started, pass_started + seconds))
                if report is not None:
                    state = _lake_state(lake, pg)
                    samples.append(
                        {
                            "commits": at,
                            "elapsed_s": round(time.perf_counter() - started),
                            "pass_s": round(seconds, 1),
                            "vacuum_s": report.vacuum_seconds,
                            "merges_given_up": report.merges_given_up,
                            "backlog_merges": report.backlog_merges,
                            "files_before_pass": report.files_before,
                            "files": state["files"],
                            "snapshots": state["snapshots"],
                            "catalog_mb": round(float(state["catalog_mb"]), 1),
                            "largest_tables": state["largest_tables"],
                        }
                    )
                    print(json.dumps(samples[-1]), file=sys.stderr, flush=True)
            stop.wait(0.05)

    first_flush_ms = [warm_up(p) for p in range(args.proxies)]
    pg0 = _postgres_cpu_s()
    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(p,), daemon=True) for p in range(args.proxies)]
    loop = threading.Thread(target=maintain_loop, daemon=True)
    loop.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    loop.join()
    wall = time.perf_counter() - started
    pg_cpu = _postgres_cpu_s() - pg0
    failures = sum(w.failures for _, w in writers)
    for spool, writer in writers:
        writer.stop()
        spool.close()
    with store(lake) as con:
        (events,) = con.execute("SELECT count(*) FROM usage_events").fetchone() or (0,)
    half = samples[len(samples) // 2 :]
    flush_ms = [(t1 - t0) * 1000 for t0, t1 in flush_spans]
    during, outside = _split_by_passes(flush_spans, pass_spans)
    timed_events = events - args.proxies * args.events  # the warm-up's are not timed
    return {
        "proxies": args.proxies,
        "commits": commits[0],
        "events": events,
        "events_expected": commits[0] * args.events,
        "wall_s": round(wall, 1),
        "commits_per_s": round(commits[0] / wall, 1),
        "failed_flushes": failures,
        "first_flush_ms_max": round(max(first_flush_ms), 1),
        "flush_ms_p50": _pct(flush_ms, 0.5),
        "flush_ms_p99": _pct(flush_ms, 0.99),
        "flushes_during_passes": len(during),
        "flush_ms_p99_during_passes": _pct(during, 0.99) if during else None,
        "flush_ms_p99_outside_passes": _pct(outside, 0.99) if outside else None,
        "writer_cpu_us_per_event": round(cpu_s[0] / max(timed_events, 1) * 1e6, 1),
        "postgres_cpu_us_per_event": round(pg_cpu / max(timed_events, 1) * 1e6, 1),
        "passes": len(samples),
        "failed_passes": failed_passes,
        "pass_s_max": max((s["pass_s"] for s in samples), default=None),
        "second_half_max": {
            k: max((s[k] for s in half), default=None)
            for k in ("files_before_pass", "files", "snapshots", "catalog_mb")
        },
        "samples": samples,
    }


def _moving_cpu_s(writers: list[tuple[Spool, SpoolWriter]]) -> float:
    """CPU the writers' mover threads used on moves (staged ingest; else 0)."""
    return sum(w.mover.cpu_s for _, w in writers if w.mover is not None)


class TimedWriter(SpoolWriter):
    """The real writer, its flushes timed from outside (start, end, wrote something)."""

    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.timings: list[tuple[float, float, bool]] = []

    def flush(self, *, hold: bool = False) -> bool:
        before, t0 = self.batches, time.monotonic()
        ok = super().flush(hold=hold)
        self.timings.append((t0, time.monotonic(), ok and self.batches > before))
        return ok


def rate(args: argparse.Namespace, lake: str, pg: str, work: Path) -> dict[str, object]:
    writers = []
    for p in range(args.proxies):
        spool = Spool(work / f"spool-{p}")
        writers.append((spool, TimedWriter(spool, lake, interval=args.interval)))
    appended: list[list[float]] = [[] for _ in writers]
    stop = threading.Event()

    def produce(p: int) -> None:
        spool, writer = writers[p]
        period = 1.0 / args.rate
        start = time.monotonic()
        n = 0
        while not stop.is_set():
            due = start + n * period
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ts = datetime.now(UTC).replace(tzinfo=None).isoformat()
            writer.notify(spool.append(_event(p, n, args.customers, ts)))
            appended[p].append(time.monotonic())
            n += 1

    maintainer = LakeMaintainer(lake, every_s=0, holder="fleet-bench")
    passes: list[float | str] = []
    pass_spans: list[tuple[float, float]] = []

    def maintain_loop() -> None:
        lower_thread_priority(MAINTENANCE_NICENESS)  # as a proxy's maintainer thread
        while not stop.wait(args.maintain_every_s):
            t0 = time.perf_counter()
            span_start = time.monotonic()  # the writers' timings are monotonic
            try:
                if maintainer.run_once(keep_snapshots=args.keep_snapshots) is not None:
                    passes.append(round(time.perf_counter() - t0, 2))
            except Exception as e:  # a proxy's maintainer logs it and tries later
                passes.append(f"failed: {str(e)[:200]}")
            pass_spans.append((span_start, time.monotonic()))

    # One event each before the clock starts, so that attaching the lake and the first
    # (checked) flush are not counted: a running proxy did both long before.
    warm_ts = datetime.now(UTC).replace(tzinfo=None).isoformat()
    for p, (spool, writer) in enumerate(writers):
        spool.append(_event(p, 0, args.customers, warm_ts))
        writer.start()
    # Ten attaches at once take 2-5 s on two cores; a clock started at a fixed 2 s counted
    # the late ones, and then every writer's catching-up flush at the same instant.
    deadline = time.monotonic() + 120
    while any(w.batches < 1 for _, w in writers) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2 * args.interval)  # idle flushes: each writer back on its own interval
    first_flush_ms = max((t1 - t0) * 1000 for _, w in writers for t0, t1, _did in w.timings[:1])
    for _, writer in writers:
        writer.timings.clear()
    clocks = [
        time.pthread_getcpuclockid(w._thread.ident)  # type: ignore[union-attr,arg-type]
        for _, w in writers
    ]
    cpu0 = [time.clock_gettime(c) for c in clocks]
    moving0 = _moving_cpu_s(writers)
    pg0 = _postgres_cpu_s()
    producers = [
        threading.Thread(target=produce, args=(p,), daemon=True) for p in range(len(writers))
    ]
    loop = threading.Thread(target=maintain_loop, daemon=True)
    for t in [*producers, loop]:
        t.start()
    time.sleep(args.seconds)
    stop.set()
    for t in producers:
        t.join()
    time.sleep(args.interval * 3)  # the last events committed by the writers' own loops
    cpu = sum(time.clock_gettime(c) - c0 for c, c0 in zip(clocks, cpu0, strict=True))
    moving = _moving_cpu_s(writers) - moving0
    pg_cpu = _postgres_cpu_s() - pg0
    moves = sum(w.mover.moves for _, w in writers if w.mover is not None)
    loop.join()
    lags: list[float] = []
    flush_ms: list[float] = []
    spans: list[tuple[float, float]] = []
    p99_by_writer: list[float] = []
    for (_, writer), times in zip(writers, appended, strict=True):
        wrote = [(t0, t1) for t0, t1, did in writer.timings if did]
        flush_ms += [(t1 - t0) * 1000 for t0, t1 in wrote]
        spans += wrote
        p99_by_writer.append(_pct([(t1 - t0) * 1000 for t0, t1 in wrote], 0.99))
        starts = [t0 for t0, _ in wrote]
        for t in times:  # committed by the first writing flush that started after it
            i = bisect.bisect_right(starts, t)
            if i < len(wrote):
                lags.append(wrote[i][1] - t)
    during, outside = _split_by_passes(spans, pass_spans)
    failures = sum(w.failures for _, w in writers)
    for spool, writer in writers:
        writer.stop()
        spool.close()
    events = sum(len(t) for t in appended)
    with store(lake) as con, staged_reads(con, lake):  # staged: the lines not moved too
        (stored,) = con.execute("SELECT count(*) FROM usage_events").fetchone() or (0,)
    stored -= len(writers)  # the warm-up events
    return {
        "proxies": args.proxies,
        "rate_per_proxy": args.rate,
        "interval_s": args.interval,
        "events": events,
        "stored": stored,
        "failed_flushes": failures,
        "ingest_lag_s_p50": round(statistics.median(lags), 3) if lags else None,
        "ingest_lag_s_p99": round(sorted(lags)[int(len(lags) * 0.99)], 3) if lags else None,
        "flush_ms_p50": _pct(flush_ms, 0.5),
        "flush_ms_p99": _pct(flush_ms, 0.99),
        # a tail held by a few writers is theirs (their flushes keep meeting others');
        # one shared by all is the host's
        "first_flush_ms_max": round(first_flush_ms, 1),
        "flush_ms_p99_by_writer": sorted(p99_by_writer),
        "flush_ms_p99_during_passes": _pct(during, 0.99) if during else None,
        "flush_ms_p99_outside_passes": _pct(outside, 0.99) if outside else None,
        "events_per_flush": round(events / max(len(flush_ms), 1), 1),
        "ingest": args.ingest,
        "writer_cpu_us_per_event": round((cpu + moving) / max(events, 1) * 1e6, 1),
        "of_which_moves_us_per_event": round(moving / max(events, 1) * 1e6, 1),
        "moves": moves,
        "postgres_cpu_us_per_event": round(pg_cpu / max(events, 1) * 1e6, 1),
        "maintenance_passes_s": passes,
    }


def billing_times(lake: str, customers: int, work: Path) -> dict[str, float]:
    catalog = work / "catalog.yaml"
    write_catalog(catalog, customers)
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
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("month", help="the lake's shape over many commits")
    m.add_argument("--commits", type=int, default=60_000, help="fleet commits in all")
    m.add_argument("--events", type=int, default=20, help="events per commit")
    m.add_argument("--maintain-every", type=int, default=6000, help="fleet commits per pass")
    m.add_argument(
        "--commits-per-s",
        type=float,
        default=20.0,
        help="fleet commit rate (0: as fast as they go). A real fleet of 10 makes 10/s; "
        "much faster starves a merge's commit (it retries until no writer committed "
        "meanwhile), which a real fleet would not see",
    )
    m.add_argument("--billing", action="store_true", help="then time billing on the lake")
    m.add_argument(
        "--merge-files",
        type=int,
        default=None,
        help="merges (output files) of a pass's usual merge call (default: the pass's)",
    )
    r = sub.add_parser("rate", help="ingest lag and CPU at a request rate")
    r.add_argument("--rate", type=float, default=100.0, help="events/s per proxy")
    r.add_argument("--seconds", type=float, default=60.0)
    r.add_argument("--interval", type=float, default=1.0, help="writer flush interval")
    r.add_argument("--maintain-every-s", type=float, default=30.0)
    r.add_argument(
        "--ingest",
        choices=("append", "staged"),
        default="append",
        help="METERLINE_LAKE_INGEST: staged counts each writer's mover thread as its CPU",
    )
    r.add_argument("--move-every-s", type=float, default=30.0, help="with --ingest staged")
    for p in (m, r):
        p.add_argument("--proxies", type=int, default=10)
        p.add_argument("--keep-snapshots", type=int, default=6000)
        p.add_argument("--customers", type=int, default=100)
    args = ap.parse_args()
    # ``timeout`` or a kill: unwind, so the throwaway PostgreSQL server is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="meterline-fleet-") as tmp, postgres_server() as pg:
        work = Path(tmp)
        os.environ["METERLINE_LAKE_DATA"] = str(work / "lake-data")
        os.environ["METERLINE_LAKE_MAINTAIN_EVERY"] = "0"  # passes driven below
        if args.mode == "rate":
            os.environ["METERLINE_LAKE_INGEST"] = args.ingest
            os.environ["METERLINE_LAKE_MOVE_EVERY"] = str(args.move_every_s)
        lake = f"ducklake:postgres:{pg}"
        report = (month if args.mode == "month" else rate)(args, lake, pg, work)
        if args.mode == "month" and args.billing:
            report |= billing_times(lake, args.customers, work)
        print(json.dumps({"uptime": os.getloadavg(), **report}, indent=1))


if __name__ == "__main__":
    main()
