"""The billing store: refuses a missing file, migrates everything, waits out a lock."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import billing.stripe  # noqa: F401 - registers the Stripe tables, as the CLI does
from billing.store import all_migrations, billing_store
from meterline.store import StoreError

TABLES = {
    "usage_events",
    "invoices",
    "invoice_lines",
    "invoice_windows",
    "stripe_customers",
    "stripe_invoices",
    "stripe_items",
    "schema_migrations",
}


def test_a_missing_file_is_refused_not_created(tmp_path: Path) -> None:
    path = tmp_path / "typo.duckdb"
    with pytest.raises(StoreError) as err, billing_store(path):
        pass
    assert str(err.value) == f"{path}: no such database (nothing metered yet?)"
    assert not path.exists()


def test_create_applies_every_migration_once(tmp_path: Path) -> None:
    path = tmp_path / "m.duckdb"
    with billing_store(path, create=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        applied = [r[0] for r in con.execute("SELECT name FROM schema_migrations").fetchall()]
    assert tables >= TABLES
    assert applied == [m.name for m in all_migrations()]
    with billing_store(path) as con:
        (count,) = con.execute("SELECT count(*) FROM schema_migrations").fetchone() or (0,)
    assert count == len(all_migrations())


HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


@contextmanager
def held(path: Path, seconds: float) -> Iterator[None]:
    """Another process holds the DuckDB file for ``seconds`` (from when this yields)."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
        yield
        proc.wait(timeout=30)


def test_waits_while_another_process_holds_the_file(tmp_path: Path) -> None:
    path = tmp_path / "busy.duckdb"
    with billing_store(path, create=True):
        pass
    with held(path, 1.0):
        started = time.monotonic()
        with billing_store(path, wait_s=30) as con:
            waited = time.monotonic() - started
            assert con.execute("SELECT count(*) FROM invoices").fetchone() == (0,)
    assert waited > 0.5


def test_gives_up_after_wait_s(tmp_path: Path) -> None:
    path = tmp_path / "busy.duckdb"
    with billing_store(path, create=True):
        pass
    with held(path, 3.0), pytest.raises(StoreError) as err, billing_store(path, wait_s=0.3):
        pass
    assert str(err.value).startswith(f"{path}: cannot open: ")
