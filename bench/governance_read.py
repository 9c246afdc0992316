"""Benchmark: governance's store read every refresh, on a store holding a month of events.

The proxy re-reads the store every ``meter_governance_refresh`` (2 s by default) to learn
every proxy's usage of the current periods. This measures one such read
(``meterline.entitlements.reading.read_snapshot``: window sums, pending ids, balances) on
``--events`` events of the current month (1,000 customers, two hard limits each), in
ingest order, side by side in one run:

- **whole**: every read sums every window over all the period's events (what each read
  did before the sums were kept);
- **kept**: the proxy's way (:class:`meterline.entitlements.windowsums.KeptSums`): the
  first read sums whole windows, later ones only the events ingested since the settled
  boundary (two minutes before the read).

Between reads ``--per-read`` new events are stored, as a proxy at 100 requests/s does in
2 s. Each read looks for 200 pending event ids. Wall and CPU time (the process's: DuckDB
runs on every core) per read, median of ``--reads``.

Usage::

    .venv/bin/python bench/governance_read.py                       # 10M events, a file
    .venv/bin/python bench/governance_read.py --events 1000000 --reads 10
    .venv/bin/python bench/governance_read.py --store lake          # DuckLake on PostgreSQL
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import billing.cli  # noqa: E402, F401  (registers every package's tables, as the CLI does)
from bench.billing_bench import EVENTS_SQL, write_catalog  # noqa: E402
from billing.store import billing_store  # noqa: E402
from meterline.catalog import load_catalog  # noqa: E402
from meterline.entitlements import build_policy, fleetsums  # noqa: E402
from meterline.entitlements.reading import read_snapshot  # noqa: E402
from meterline.entitlements.windowsums import KeptSums  # noqa: E402
from meterline.lakerepair import metadata_alias  # noqa: E402
from meterline.store import store  # noqa: E402

MONTH_START = datetime(2026, 3, 1, tzinfo=UTC)
MONTH_US = 31 * 24 * 3600 * 1_000_000
LIMITS = (
    "    entitlements:\n"
    "      - {feature: gpt-in, limit: 900000000000, enforcement: hard}\n"
    "      - {feature: claude-out, limit: 900000000000, enforcement: hard}\n"
)


#: The stored events fill the month but its last hour; the reads' events come after.
LAST_HOUR_US = MONTH_US - 3600 * 1_000_000
#: Between two events stored between reads: a proxy at 100 requests/s.
LIVE_SPACING_US = 10_000


def events_sql(lo: int, hi: int, customers: int, origin_us: int, spacing_us: int) -> str:
    """The billing bench's events ``lo <= i < hi``, the ``i``-th ``origin_us + (i - lo) *
    spacing_us`` µs into the month, in ingest order (a store the proxies filled over
    time), each ingested a second after it ended."""
    spread = EVENTS_SQL.replace(
        "TIMESTAMP '2026-03-01'\n"
        "             + to_microseconds(CAST(hash(i * 7) % 2678400000000 AS BIGINT)) AS ts",
        "TIMESTAMP '2026-03-01' + to_microseconds("
        f"CAST({origin_us} + (i - {lo}) * {spacing_us} AS BIGINT)) AS ts",
    )
    assert spread != EVENTS_SQL, "the billing bench's event SQL changed"
    return spread.format(lo=lo, hi=hi, customers=customers)


def fill(locator: str, events: int, customers: int, chunk: int) -> None:
    started = time.perf_counter()
    with billing_store(locator, create=True) as con:
        for lo in range(0, events, chunk):
            hi = min(events, lo + chunk)
            spacing = LAST_HOUR_US // events
            con.execute(events_sql(lo, hi, customers, lo * spacing, spacing))
    print(f"stored {events:,} events in {time.perf_counter() - started:.1f} s")


def reads(
    locator: str, catalog_path: Path, args: argparse.Namespace, first: int, kept: KeptSums | None
) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each read; ``--per-read`` events (from the ``first``-th)
    stored before each. Kept sums are checked against a whole read at the end."""
    catalog = load_catalog(catalog_path)
    policy = build_policy(catalog, MONTH_START + timedelta(microseconds=MONTH_US - 1))
    pending = [f"ml:bench-{i}" for i in range(200)]
    walls, cpus = [], []
    with store(locator) as con:
        for n in range(args.reads):
            lo = first + n * args.per_read
            origin = LAST_HOUR_US + (lo - args.events) * LIVE_SPACING_US
            con.execute(events_sql(lo, lo + args.per_read, args.customers, origin, LIVE_SPACING_US))
            # a read a second after the last event was stored (ingested 1 s after its ts)
            end_us = origin + args.per_read * LIVE_SPACING_US
            at = MONTH_START + timedelta(microseconds=end_us, seconds=2)
            wall, cpu = time.perf_counter(), time.process_time()
            snap = read_snapshot(con, policy, at, lambda: pending, kept=kept)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        whole = read_snapshot(con, policy, at, lambda: pending)
        assert snap.stored == whole.stored, "kept sums differ from a whole read"
    return walls, cpus


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--customers", type=int, default=1000)
    p.add_argument("--reads", type=int, default=8)
    p.add_argument("--per-read", type=int, default=200)
    p.add_argument("--chunk", type=int, default=1_000_000)
    p.add_argument("--store", choices=("file", "lake"), default="file")
    args = p.parse_args()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="govread-")))
        if args.store == "lake":
            from tests.support.postgres import postgres_server

            os.environ["METERLINE_LAKE_DATA"] = str(workdir / "lake-data")
            locator = "ducklake:postgres:" + stack.enter_context(postgres_server())
        else:
            locator = str(workdir / "events.duckdb")
        catalog_path = workdir / "catalog.yaml"
        write_catalog(catalog_path, args.customers)
        text = catalog_path.read_text(encoding="utf-8")
        catalog_path.write_text(text.replace("    rate_cards:\n", LIMITS + "    rate_cards:\n"))
        fill(locator, args.events, args.customers, args.chunk)
        whole = reads(locator, catalog_path, args, args.events, None)
        kept_sums = KeptSums()
        later = args.events + args.reads * args.per_read
        kept = reads(locator, catalog_path, args, later, kept_sums)
        after_kept = later + args.reads * args.per_read
        args.reads = 1
        # The catalog reloaded (new objects, the same limits), then a consumer added to
        # one customer: only the counters whose windows changed are summed whole.
        reloaded = reads(locator, catalog_path, args, after_kept, kept_sums)
        text = catalog_path.read_text(encoding="utf-8")
        catalog_path.write_text(
            text.replace("consumers:\n", "consumers:\n  - name: agent-extra\n", 1).replace(
                "consumers: [agent-0000]", "consumers: [agent-0000, agent-extra]"
            )
        )
        one_changed = reads(locator, catalog_path, args, after_kept + args.per_read, kept_sums)
        catalog_path.write_text(text)  # and back (the sums the restart takes up)
        reads(locator, catalog_path, args, after_kept + 2 * args.per_read, kept_sums)
        assert kept_sums.changed_reads == 3, "a change summed every counter whole"
        after_kept += 3 * args.per_read
        restarted = KeptSums()  # a proxy restarted: the saved sums taken up
        state = kept_sums.state()
        assert state is not None
        restarted.restore(json.loads(json.dumps(state)))
        taken_up = reads(locator, catalog_path, args, after_kept, restarted)
        assert restarted.full_reads == 0, "the saved sums were not taken up"
        joined: tuple[list[float], list[float]] | None = None
        if args.store == "lake":  # a proxy joining the fleet: another's sums, from PostgreSQL
            alias = metadata_alias()
            con = stack.enter_context(store(locator))
            fleetsums.create_table(con, alias)
            fleetsums.write(con, alias, "bench:1:x", json.loads(json.dumps(state)))
            joining = KeptSums(shared=lambda digest: fleetsums.latest(con, alias, digest))
            joined = reads(locator, catalog_path, args, after_kept + 1, joining)
            assert joining.taken_from_fleet, "the fleet's sums were not taken up"
    reads_n = len(whole[0])
    print(
        f"\n{args.events:,} events ({args.store}), {args.customers:,} customers x 2 limits, "
        f"{args.per_read} events stored between reads; ms per read, median of {reads_n}"
    )
    print(f"  {'':38} {'wall':>9} {'CPU':>9}")
    for label, (walls, cpus) in (
        ("whole windows every read", whole),
        ("kept sums: first read (whole)", ([kept[0][0]], [kept[1][0]])),
        ("kept sums: later reads", (kept[0][1:], kept[1][1:])),
        ("the catalog reloaded, unchanged", reloaded),
        ("a consumer added to one customer", one_changed),
        ("restarted, saved sums taken up", taken_up),
        *([("joining the fleet, its sums taken up", joined)] if joined else []),
    ):
        wall, cpu = statistics.median(walls) * 1000, statistics.median(cpus) * 1000
        print(f"  {label:38} {wall:9.1f} {cpu:9.1f}")
    print(f"  whole-window reads among the kept ones: {kept_sums.full_reads}")


if __name__ == "__main__":
    main()
