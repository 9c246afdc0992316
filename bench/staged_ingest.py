"""The way to issue 12's writer target at a commit a second: stage flushes in PostgreSQL.

A lake flush is one DuckLake commit, ~7 ms of the writer's CPU and ~1.5 ms of
PostgreSQL's however it is arranged (docs/fleet.md, "Where the ~10 ms of a cold lake
flush go"): at 100 events a flush that is ~85 µs per event before the writer's own
Python, and the target (<= 100 µs, PostgreSQL counted) is missed at a 1 s interval. This
bench measures the design that would take DuckLake's commit off the flush, side by side
with today's append on one lake (flushes alternated, each ``--gap-ms`` after the last, so
that both run as cold as the writer's loop):

- **append** (today): :data:`addons.metering.batchsql.APPEND_SQL`, one DuckLake commit
  (one Parquet file, one snapshot) per flush.
- **stage**: the flush's lines go, as text, into a table of the lake's own PostgreSQL
  catalog database, no DuckLake commit; two ways, alternated with the append: through
  the attachment DuckLake already holds (``postgres_execute``: no second connection, no
  other credentials), and by libpq's ``COPY`` on a connection of the writer's own
  (psycopg: :func:`meterline.lakestage.stage`).
- **move**, every ``--move-every`` staged flushes (a maintenance pass's job, under the
  lease): :func:`meterline.lakestage.move`, one DuckLake commit, exact by a transaction-id
  bound written in that commit (the module says how).
- **read**, every 10 flushes: what a reader would count, in one lake snapshot: the lake's
  events plus the staged lines at or above the bound that snapshot holds
  (:class:`meterline.lakestage.StagedView`). It must equal the events appended so
  far, moves or not; the bench stops if any count is off.

Reported per flush: writer CPU (the thread's) and PostgreSQL's (``/proc``), the move's
cost per event, the reads' time, and the counts. The proxy's writer still appends
(docs/fleet.md, "Staging in the catalog: the way to the target at a commit a second",
says what wiring it in must keep).

Usage::

    .venv/bin/python bench/staged_ingest.py --events 100 --flushes 60 --move-every 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

from addons.metering.batchsql import APPEND_SQL, _files_literal, _ingested_at  # noqa: E402
from bench.flush_profile import _event  # noqa: E402
from bench.lake_append import writer_lake  # noqa: E402
from bench.writer_bench import _postgres_cpu_s  # noqa: E402
from meterline import lakestage  # noqa: E402
from meterline.lakerepair import metadata_alias  # noqa: E402
from meterline.sqltext import sql_string  # noqa: E402

#: DuckLake's own attachment of the catalog database (``__ducklake_metadata_<alias>``).
CATALOG_DB = metadata_alias("lake")


def _pg(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    con.execute(f"CALL postgres_execute({sql_string(CATALOG_DB)}, {sql_string(sql)})")


def _pg_literal(line: str) -> str:
    return "E'" + line.replace("\\", "\\\\").replace("'", "\\'") + "'"


def stage(con: duckdb.DuckDBPyConnection, segment: Path) -> None:
    """The flush that stages: the segment's lines into the catalog database, one statement."""
    values = ",".join(f"({_pg_literal(line)})" for line in segment.read_text().splitlines())
    _pg(con, f"INSERT INTO {lakestage.STAGED} (line) VALUES {values}")


def stage_copy(pg: Any, segment: Path) -> None:
    """The same by libpq's ``COPY`` (:func:`meterline.lakestage.stage`)."""
    with segment.open("rb") as lines:
        lakestage.stage(pg, lines)


def read_count(reader: duckdb.DuckDBPyConnection, view: lakestage.StagedView) -> int:
    """What a reader counts: the lake's events plus the staged lines not yet moved (a
    cursor of its own: the view shadows ``usage_events`` for its connection only)."""
    view.refresh(reader)
    row = reader.execute("SELECT count(*) FROM usage_events").fetchone()
    return int(row[0]) if row else 0


def append(con: duckdb.DuckDBPyConnection, segment: Path) -> None:
    sql = APPEND_SQL.replace("$files", _files_literal([segment]))
    con.execute(sql.replace("$ingested_at", _ingested_at())).fetchone()


def _timed[T](fn: Callable[[], T]) -> tuple[float, float, T]:
    """(writer thread CPU ms, PostgreSQL CPU ms, the result) of ``fn()``."""
    postgres0 = _postgres_cpu_s()  # first: it scans /proc, which is not the writer's
    cpu0 = time.thread_time()
    result = fn()
    cpu = time.thread_time() - cpu0
    time.sleep(0.05)  # the backend's CPU reaches /proc a moment later
    return cpu * 1000, (_postgres_cpu_s() - postgres0) * 1000, result


def measure(
    conninfo: str, work: Path, events: int, flushes: int, gap_s: float, every: int
) -> dict[str, object]:
    import psycopg  # a dev dependency: the proxy itself has no libpq connection

    pg = psycopg.connect(conninfo, autocommit=True)
    con = writer_lake(conninfo, work)
    lakestage.create(con)
    reader = con.cursor()
    reader.execute("USE lake")
    view = lakestage.StagedView(psycopg.connect(conninfo, autocommit=True))
    figures: dict[str, list[tuple[float, float]]] = {
        "append": [], "stage": [], "stage_copy": [], "move": []
    }  # fmt: skip
    ways: dict[str, Callable[[Path], None]] = {
        "append": lambda segment: append(con, segment),
        "stage": lambda segment: stage(con, segment),
        "stage_copy": lambda segment: stage_copy(pg, segment),
    }
    moved: list[int] = []
    reads: list[tuple[float, int, int]] = []
    serial = staged_since_move = 0
    for flush in range(3 * flushes + 6):
        segment = work / f"segment-{flush}.jsonl"
        segment.write_text("".join(json.dumps(_event(serial + i)) + "\n" for i in range(events)))
        serial += events
        time.sleep(gap_s)
        way = ("append", "stage", "stage_copy")[flush % 3]
        cpu, postgres, _ = _timed(lambda: ways[way](segment))  # noqa: B023 (called at once)
        if flush >= 6:
            figures[way].append((cpu, postgres))
        if way != "append":
            staged_since_move += 1
            if staged_since_move == every:
                time.sleep(gap_s)
                cpu, postgres, added = _timed(lambda: lakestage.move(con, pg, work))
                figures["move"].append((cpu, postgres))
                moved.append(added)
                staged_since_move = 0
        if flush % 10 == 9:  # a reader, now and then: exact whatever was moved
            t0 = time.perf_counter()
            count = read_count(reader, view)
            reads.append((time.perf_counter() - t0, count, serial))
    final_moved = lakestage.move(con, pg, work)
    stored = con.execute("SELECT count(*), count(DISTINCT event_id) FROM usage_events").fetchone()
    again = lakestage.move(con, pg, work)  # a move run twice adds nothing
    wrong = [f"read {count} of {appended}" for _, count, appended in reads if count != appended]
    if stored != (serial, serial) or again or wrong:
        raise SystemExit(f"not exact: stored {stored} of {serial}, moved again {again}, {wrong}")

    def per_flush(way: str) -> dict[str, float]:
        cpu = statistics.median(c for c, _ in figures[way])
        postgres = statistics.mean(p for _, p in figures[way])  # ticks: a mean
        return {
            "writer_cpu_ms": round(cpu, 2),
            "postgres_cpu_ms": round(postgres, 2),
            "cpu_us_per_event": round((cpu + postgres) * 1000 / events, 1),
        }

    move_cpu = sum(c + p for c, p in figures["move"])
    move_events = sum(moved) or 1
    return {
        "events_per_flush": events,
        "flushes_each": len(figures["append"]),
        "append": per_flush("append"),
        "stage": per_flush("stage"),
        "move": {
            "moves": len(moved),
            "events_per_move": round(statistics.mean(moved), 1) if moved else 0,
            "cpu_ms_per_move": round(move_cpu / max(len(moved), 1), 1),
            "cpu_us_per_event": round(move_cpu * 1000 / move_events, 1),
        },
        "stage_copy": per_flush("stage_copy"),
        "stage_plus_move_us_per_event": round(
            per_flush("stage")["cpu_us_per_event"] + move_cpu * 1000 / move_events, 1
        ),
        "stage_copy_plus_move_us_per_event": round(
            per_flush("stage_copy")["cpu_us_per_event"] + move_cpu * 1000 / move_events, 1
        ),
        "reads": {
            "exact": all(count == appended for _, count, appended in reads),
            "count": len(reads),
            "ms_median": round(statistics.median(t for t, _, _ in reads) * 1000, 1),
        },
        "stored": stored[0] if stored else 0,
        "distinct": stored[1] if stored else 0,
        "appended": serial,
        "final_move": final_moved,
        "move_again_added": again,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100, help="events per flush")
    parser.add_argument("--flushes", type=int, default=60, help="flushes of each way")
    parser.add_argument("--gap-ms", type=float, default=300.0, help="sleep before each flush")
    parser.add_argument("--move-every", type=int, default=30, help="staged flushes per move")
    args = parser.parse_args()
    from tests.support.postgres import postgres_server

    with tempfile.TemporaryDirectory(prefix="meterline-staged-") as tmp, postgres_server() as pg:
        figures = measure(
            pg, Path(tmp), args.events, args.flushes, args.gap_ms / 1000, args.move_every
        )
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
