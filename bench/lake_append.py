"""A lake commit's CPU under whichever DuckDB runs this script: 1.4.4 or a later line.

Issue 12's writer target (<= 100 µs of CPU per event, PostgreSQL counted, at a commit a
second and 100 requests/s) is missed by DuckLake's fixed cost per commit. This bench
answers whether a later DuckDB and DuckLake would change that: it makes the writer's own
append (:data:`addons.metering.batchsql.APPEND_SQL`, one spool segment of ``--events``
events per statement, ``--gap-ms`` apart as in the writer's loop) on a fresh lake in a
throwaway PostgreSQL, and reports the writer thread's CPU and PostgreSQL's per flush.

Under the project's DuckDB 1.4.4 the extensions come from the ``duckdb-ext-*`` wheels,
as in the proxy. Under another DuckDB they come from the ``duckdb-extension-*`` wheels
of that version, in a scratch environment (never the project's)::

    .venv/bin/python bench/lake_append.py
    PYENV_VERSION=3.12.1 python3.12 -m venv /tmp/duckdb15 && /tmp/duckdb15/bin/pip install \\
        duckdb==1.5.5 duckdb-extension-ducklake==1.5.5 \\
        duckdb-extension-postgres-scanner==1.5.5 orjson
    /tmp/duckdb15/bin/python bench/lake_append.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

from addons.metering.batchsql import APPEND_SQL, _files_literal, _ingested_at  # noqa: E402
from addons.metering.storelink import _INSTANCE_SETTINGS  # noqa: E402
from bench.flush_profile import _event  # noqa: E402
from bench.writer_bench import _postgres_cpu_s  # noqa: E402
from meterline.eventschema import create_table_sql  # noqa: E402
from meterline.sqltext import sql_string  # noqa: E402
from meterline.store import _load_extensions  # noqa: E402

#: The extensions of the ``duckdb-extension-*`` wheels, by their package names.
_LATER_LINE_PACKAGES = ("duckdb_extension_ducklake", "duckdb_extension_postgres_scanner")


def load_lake_extensions(con: duckdb.DuckDBPyConnection) -> None:
    """ducklake and postgres for this DuckDB: the project's wheels on 1.4.4, else by file."""
    if duckdb.__version__ == "1.4.4":
        _load_extensions(con, "ducklake", "postgres")
        return
    for package in _LATER_LINE_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            wheel = f"{package.replace('_', '-')}=={duckdb.__version__}"
            raise SystemExit(f"duckdb {duckdb.__version__}: pip install {wheel}")
        base = Path(next(iter(spec.submodule_search_locations))) / "extensions"
        (path,) = base.glob(f"v{duckdb.__version__}/*.duckdb_extension")
        con.execute(f"LOAD {sql_string(str(path))}")


def writer_lake(conninfo: str, work: Path) -> duckdb.DuckDBPyConnection:
    """A fresh lake on ``conninfo``, its files under ``work``, attached as the writer's is
    (one thread: all of DuckDB's CPU is the calling thread's), the events table made."""
    con = duckdb.connect()
    for setting in _INSTANCE_SETTINGS:
        con.execute(setting)
    load_lake_extensions(con)
    locator = sql_string(f"ducklake:postgres:{conninfo}")
    con.execute(f"ATTACH {locator} AS lake (DATA_PATH {sql_string(str(work / 'data'))})")
    con.execute("USE lake")
    con.execute(create_table_sql())
    return con


def measure(conninfo: str, work: Path, events: int, flushes: int, gap_s: float) -> dict[str, float]:
    """``flushes`` appends (after 3 not counted), each a fresh segment ``gap_s`` after the last."""
    con = writer_lake(conninfo, work)
    cpu_ms: list[float] = []
    postgres_ms: list[float] = []
    serial = 0
    for flush in range(flushes + 3):
        segment = work / f"segment-{flush}.jsonl"
        with segment.open("w") as out:
            for _ in range(events):
                out.write(json.dumps(_event(serial)) + "\n")
                serial += 1
        time.sleep(gap_s)
        sql = APPEND_SQL.replace("$files", _files_literal([segment]))
        sql = sql.replace("$ingested_at", _ingested_at())  # as the writer stamps a flush
        # PostgreSQL's CPU first: reading it scans /proc (~2 ms), which must not count
        # as the writer's (it did until 5 December: ~2.3 ms more per flush)
        postgres0 = _postgres_cpu_s()
        cpu0 = time.thread_time()
        con.execute(sql).fetchone()
        cpu = time.thread_time() - cpu0
        time.sleep(0.05)  # the backend's CPU reaches /proc a moment later
        if flush >= 3:
            cpu_ms.append(cpu * 1000)
            postgres_ms.append((_postgres_cpu_s() - postgres0) * 1000)
    stored = (con.execute("SELECT count(*) FROM usage_events").fetchone() or (0,))[0]
    if stored != serial:
        raise SystemExit(f"stored {stored} of {serial} events")
    writer = statistics.median(cpu_ms)
    postgres = statistics.mean(postgres_ms)  # /proc counts in ticks: a mean, not a median
    return {
        "writer_cpu_ms_per_flush": round(writer, 2),
        "postgres_cpu_ms_per_flush": round(postgres, 2),
        "cpu_us_per_event": round((writer + postgres) * 1000 / events, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100, help="events per flush")
    parser.add_argument("--flushes", type=int, default=30)
    parser.add_argument("--gap-ms", type=float, default=300.0, help="sleep between flushes")
    args = parser.parse_args()
    from tests.support.postgres import postgres_server

    scratch = tempfile.TemporaryDirectory(prefix="meterline-lake-append-")
    with scratch as tmp, postgres_server() as conninfo:
        figures = measure(conninfo, Path(tmp), args.events, args.flushes, args.gap_ms / 1000)
    print(json.dumps({"duckdb": duckdb.__version__, "events_per_flush": args.events, **figures}))


if __name__ == "__main__":
    main()
