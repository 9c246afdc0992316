"""Benchmark: one month of invoices for 10M events, 1,000 customers, 3 tiered plans.

Side by side, in one run, over the same DuckDB file:

1. floor: a hand-written ``GROUP BY customer, feature`` over the month's events (the least
   any invoice build must do: scan, attribute, sum);
2. build: the in-process invoice build (``billing.build.build_invoices``: the one-pass
   window aggregation, feature mapping and Decimal pricing for all customers), without
   storing; and build + store (numbering, lines, windows);
3. process: the whole ``billing invoice generate --period`` and ``billing usage`` commands
   in subprocesses (Python start-up, catalog load, store open, extensions and attach on a
   lake, build, store), wall time and each one's peak RSS (``wait4``).

Events are generated with DuckDB SQL over ``range()`` in INSERTs of ``--chunk`` events (10M
in ~20 s, 100M in a few minutes); on a lake each INSERT is one commit and about one
Parquet file, the size a compacted lake's files have. Stored invoices are deleted between
repetitions so every run does the full work.

Usage::

    .venv/bin/python bench/billing_bench.py              # 10M events, 1,000 customers
    .venv/bin/python bench/billing_bench.py --events 1000000 --repeat 5
    .venv/bin/python bench/billing_bench.py --events 10000000 --store lake  # DuckLake on PostgreSQL
    .venv/bin/python bench/billing_bench.py --events 100000000 --chunk 10000000 \
        --commands-only --dir /tmp/bb100m --reuse      # 100M events: ~4 GB of disk
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import billing.cli  # noqa: E402, F401  (registers every package's tables, as the CLI does)
from billing.build import build_invoices  # noqa: E402
from billing.invoices import generate_invoices  # noqa: E402
from billing.schedule import periods_ending_in  # noqa: E402
from billing.store import billing_store  # noqa: E402
from meterline.catalog import load_catalog  # noqa: E402
from meterline.periods import calendar_month  # noqa: E402
from meterline.store import EVENT_COLUMNS  # noqa: E402

MONTH = "2026-03"
NOW = datetime(2026, 4, 1, 0, 0, 5, tzinfo=UTC)

FEATURES = """
features:
  - {key: gpt-in, name: GPT-4o input, meter: {provider: openai, model: "gpt-4o*", token_types: [input]}}
  - {key: gpt-cached, name: GPT-4o cached, meter: {provider: openai, model: "gpt-4o*", token_types: [cached_input]}}
  - {key: gpt-out, name: GPT-4o output, meter: {provider: openai, model: "gpt-4o*", token_types: [output]}}
  - {key: claude-in, name: Claude input, meter: {provider: anthropic, model: "claude-*", token_types: [input, cache_write]}}
  - {key: claude-cached, name: Claude cached, meter: {provider: anthropic, model: "claude-*", token_types: [cached_input]}}
  - {key: claude-out, name: Claude output, meter: {provider: anthropic, model: "claude-*", token_types: [output]}}
"""  # noqa: E501


def _plan(key: str, fee: str, mode: str, scale: int) -> str:
    cards = [f"      - {{key: fee, name: Platform fee, price: {{type: flat, amount: '{fee}'}}}}"]
    for i, feature in enumerate(
        ("gpt-in", "gpt-cached", "gpt-out", "claude-in", "claude-cached", "claude-out")
    ):
        base = 1 + i
        cards.append(
            f"      - key: {feature}\n        name: {feature}\n        feature: {feature}\n"
            f"        included: {1000 * scale}\n"
            f"        price:\n          type: tiered\n          mode: {mode}\n"
            f"          per: 1000000\n          tiers:\n"
            f"            - {{up_to: {200_000 * scale}, unit_amount: '{base}.50'}}\n"
            f"            - {{up_to: {2_000_000 * scale}, unit_amount: '{base}.25', "
            f"flat_amount: '1.00'}}\n"
            f"            - {{unit_amount: '{base}.00'}}"
        )
    return (
        f"  - key: {key}\n    name: {key}\n    currency: USD\n    billing_cadence: P1M\n"
        "    rate_cards:\n" + "\n".join(cards)
    )


def write_catalog(path: Path, customers: int) -> None:
    lines = ["version: 1", "consumers:"]
    lines += [f"  - name: agent-{i:04d}" for i in range(customers)]
    lines.append(FEATURES.strip())
    lines.append("plans:")
    lines += [
        _plan("small", "19.00", "graduated", 1),
        _plan("medium", "99.00", "graduated", 5),
        _plan("large", "499.00", "volume", 20),
    ]
    lines.append("customers:")
    for i in range(customers):
        plan = ("small", "medium", "large")[i % 3]
        lines.append(
            f"  - {{key: cust-{i:04d}, name: Customer {i}, currency: USD, "
            f"consumers: [agent-{i:04d}], "
            f"subscriptions: [{{plan: {plan}, start: '2026-01-01T00:00:00Z'}}]}}"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


EVENTS_SQL = f"""
INSERT INTO usage_events ({", ".join(EVENT_COLUMNS[:24])})
WITH g AS (
    SELECT i, hash(i) AS h,
           TIMESTAMP '2026-03-01'
             + to_microseconds(CAST(hash(i * 7) % 2678400000000 AS BIGINT)) AS ts
    FROM range({{lo}}, {{hi}}) AS r(i)
)
SELECT 'ev-' || i, ts, ts + INTERVAL 1 SECOND,
       'agent-' || lpad(CAST(h % {{customers}} AS VARCHAR), 4, '0'),
       NULL,
       CASE WHEN (h >> 20) % 3 = 2 THEN 'anthropic' ELSE 'openai' END,
       CASE WHEN (h >> 20) % 3 = 2 THEN 'anthropic' ELSE 'openai' END,
       CASE (h >> 20) % 3 WHEN 0 THEN 'gpt-4o-2024-08-06' WHEN 1 THEN 'GPT-4o-mini'
            ELSE 'claude-sonnet-4-5' END,
       (h >> 24) % 2000, (h >> 32) % 500, (h >> 40) % 50, (h >> 44) % 800, 0, false,
       'resp-' || i, 'req-' || i, 'POST', 'api.example', '/v1/chat/completions', 200,
       false, 100.0, 10.0, 'bench'
FROM g
"""
"""One INSERT of the events ``lo <= i < hi``: pure SQL over ``range()``, no Python per row.
Every column is a function of ``i``, so a chunk's events are the same whatever the chunking."""


def generate_events(
    con: duckdb.DuckDBPyConnection, events: int, customers: int, chunk: int
) -> None:
    """``events`` events in INSERTs of ``chunk`` (bounded memory; on a lake, one chunk is
    one commit and about one Parquet file of ``chunk`` events: a compacted lake's files)."""
    con.execute("SET preserve_insertion_order = false")
    for lo in range(0, events, chunk):
        hi = min(lo + chunk, events)
        con.execute(EVENTS_SQL.format(lo=lo, hi=hi, customers=customers))


FLOOR_SQL = """
SELECT m.customer,
       CASE WHEN e.provider = 'openai' AND e.model ILIKE 'gpt-4o%' THEN 'gpt-4o'
            WHEN e.provider = 'anthropic' AND e.model ILIKE 'claude-%' THEN 'claude' END AS family,
       SUM(e.input_tokens), SUM(e.cached_input_tokens), SUM(e.cache_write_tokens),
       SUM(e.output_tokens)
FROM usage_events AS e JOIN bench_customers AS m ON e.consumer = m.consumer
WHERE e.ts >= TIMESTAMP '2026-03-01' AND e.ts < TIMESTAMP '2026-04-01'
GROUP BY ALL
"""
"""The floor: customers x features, written by hand for this catalog. A feature is a
model family x token type, so a family's four token sums are its features' quantities."""


def floor_quantity(rows: list[tuple[Any, ...]]) -> int:
    """Tokens the catalog's features select, from the floor's rows (claude-in = input +
    cache_write; GPT-4o cache writes are in no feature)."""
    total = 0
    for _customer, family, inp, cached, write, out in rows:
        if family == "gpt-4o":
            total += inp + cached + out
        elif family == "claude":
            total += inp + cached + write + out
    return total


def prepare(
    workdir: Path,
    events: int,
    customers: int,
    reuse: bool,
    lake: str | None = None,
    chunk: int = 5_000_000,
) -> tuple[str, Path]:
    """The events in a DuckDB file under ``workdir``, or in the DuckLake ``lake``."""
    catalog = workdir / "catalog.yaml"
    write_catalog(catalog, customers)
    if lake is not None:
        started = time.perf_counter()
        with billing_store(lake, create=True) as con:
            generate_events(con, events, customers, chunk)
            files, size = con.execute(
                "SELECT sum(file_count), sum(file_size_bytes) FROM ducklake_table_info('lake') "
                "WHERE table_name = 'usage_events'"
            ).fetchone() or (0, 0)
        print(
            f"generated {events:,} events in {time.perf_counter() - started:.1f} s -> lake: "
            f"{files} Parquet files, {size / 1e6 / max(files, 1):.0f} MB each"
        )
        return lake, catalog
    db = workdir / "bench.duckdb"
    if reuse and db.exists():
        with billing_store(db) as con:
            (have,) = con.execute("SELECT count(*) FROM usage_events").fetchone() or (0,)
        if have == events:
            print(f"reusing {events:,} events in {db}")
            return str(db), catalog
    if db.exists():
        db.unlink()
    started = time.perf_counter()
    with billing_store(db, create=True) as con:
        generate_events(con, events, customers, chunk)
        con.execute("CHECKPOINT")
    size = db.stat().st_size / 1e6
    print(
        f"generated {events:,} events in {time.perf_counter() - started:.1f} s -> {db} "
        f"({size:.0f} MB)"
    )
    return str(db), catalog


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


TIME = "/usr/bin/time"
"""GNU time reports the command's own peak RSS. (``wait4`` on a child of this process would
not: Linux carries the forking parent's high-water mark, hundreds of MB here, into it.)"""


def run_command(cmd: list[str]) -> tuple[float, float | None]:
    """Wall seconds and peak RSS (MB; None without GNU time) of one command."""
    wrapped = [TIME, "-f", "maxrss_kb=%M", *cmd] if Path(TIME).exists() else cmd
    started = time.perf_counter()
    done = subprocess.run(wrapped, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr[-2000:]}")
    last = done.stderr.rstrip().rsplit("\n", 1)[-1]
    rss = int(last.removeprefix("maxrss_kb=")) / 1024 if last.startswith("maxrss_kb=") else None
    return seconds, rss


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def clear(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("DELETE FROM invoice_windows; DELETE FROM invoice_lines; DELETE FROM invoices")


def clear_invoices(db: str) -> None:
    with billing_store(db) as con:
        clear(con)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--customers", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    ap.add_argument("--reuse", action="store_true", help="keep the events in --dir if complete")
    ap.add_argument(
        "--chunk",
        type=int,
        default=5_000_000,
        help="events per generating INSERT (on a lake: one commit, about one Parquet file)",
    )
    ap.add_argument(
        "--commands-only",
        action="store_true",
        help="skip the in-process build timings: the floor, then the two commands",
    )
    ap.add_argument(
        "--store",
        choices=("file", "lake"),
        default="file",
        help="a DuckDB file, or a DuckLake on a throwaway PostgreSQL (tests/support/postgres.py)",
    )
    args = ap.parse_args()

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="billing-bench-"))
        workdir = args.dir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        lake = None
        if args.store == "lake":
            from tests.support.postgres import postgres_server

            os.environ["METERLINE_LAKE_DATA"] = str(workdir.resolve() / "lake-data")
            lake = "ducklake:postgres:" + stack.enter_context(postgres_server())
        db, catalog_path = prepare(
            workdir, args.events, args.customers, args.reuse, lake, args.chunk
        )
        catalog = load_catalog(catalog_path)
        month = calendar_month(MONTH)
        report: list[tuple[str, list[float]]] = []

        with billing_store(db) as con:
            con.execute(
                "CREATE TEMP TABLE bench_customers AS SELECT * FROM (VALUES "
                + ", ".join(f"('{n}', '{c.key}')" for c in catalog.customers for n in c.consumers)
                + ") AS t(consumer, customer)"
            )
            clear(con)
            floor_rows = con.execute(FLOOR_SQL).fetchall()
            report.append(
                (
                    "floor   GROUP BY customer, feature",
                    timed(lambda: con.execute(FLOOR_SQL).fetchall(), args.repeat),
                )
            )

            if not args.commands_only:

                def build() -> None:
                    periods = periods_ending_in(catalog, month, list(catalog.customers))
                    invoices, _ = build_invoices(con, catalog, periods, watermark=NOW)
                    assert len(invoices) == args.customers

                report.append(("build   invoices in process", timed(build, args.repeat)))

                def build_and_store() -> None:
                    created = generate_invoices(con, catalog, MONTH, now=NOW).created
                    assert len(created) == args.customers
                    clear(con)

                report.append(
                    ("build + store (generate in process)", timed(build_and_store, args.repeat))
                )
            # same quantities as the floor: sum of usage line quantities per customer
            periods = periods_ending_in(catalog, month, list(catalog.customers))
            invoices, _ = build_invoices(con, catalog, periods, watermark=NOW)
            built = sum(ln.quantity for i in invoices for ln in i.lines if ln.kind == "usage")
            assert built == floor_quantity(floor_rows), "build and floor disagree"

        billing = [str(Path(sys.executable).parent / "billing"), "--db", db]
        billing += ["--catalog", str(catalog_path)]
        generate = [*billing, "invoice", "generate", "--period", MONTH, "--format", "csv"]
        usage = [*billing, "usage", "--format", "csv"]
        runs: dict[str, list[tuple[float, float | None]]] = {"generate": [], "usage": []}
        for _ in range(args.repeat):
            clear_invoices(db)
            runs["generate"].append(run_command(generate))
            runs["usage"].append(run_command(usage))

    report.append(("process `billing invoice generate`", [s for s, _ in runs["generate"]]))
    report.append(("process `billing usage`", [s for s, _ in runs["usage"]]))
    rss = {k: max((m or 0.0) for _, m in v) for k, v in runs.items()}
    print(
        f"\n{args.events:,} events ({args.store}), {args.customers:,} customers, "
        f"3 tiered plans, {MONTH}; peak RSS {_peak_rss_mb():.0f} MB in process, "
        f"{rss['generate']:.0f} MB for `billing invoice generate`, "
        f"{rss['usage']:.0f} MB for `billing usage`"
    )
    f = statistics.median(report[0][1])
    print(f"median of {args.repeat} runs [best]; ratio to the floor's median")
    for label, times in report:
        median = statistics.median(times)
        print(f"  {label:<38} {median:7.3f} s  [{min(times):.3f}]  {median / f:5.1f}x")
    generate_s = statistics.median(s for s, _ in runs["generate"])
    usage_s = statistics.median(s for s, _ in runs["usage"])
    targets = (  # issue 12: 10M events on a lake, 100M on one machine
        f"generate <= 3 s: {'ok' if generate_s <= 3 else 'MISSED'}; "
        f"usage <= 1 s: {'ok' if usage_s <= 1 else 'MISSED'}"
        if args.events <= 10_000_000
        else f"generate <= 10 s: {'ok' if generate_s <= 10 else 'MISSED'}"
    )
    print(f"targets ({args.events:,} events): {targets}")


if __name__ == "__main__":
    main()
