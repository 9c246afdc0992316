"""``billing invoice generate`` run three times at once on one DuckLake (cron on two
hosts, a run by hand beside it): one invoice per period, numbers never reused.

DuckLake has no constraints: before, every run stored its own invoice for the same
period, sometimes under the same number, and the customer's total doubled or tripled
(3 rounds of 4 in a scratch run). Whether the runs overlap in a round is up to the
scheduler; the assertion holds either way, and the races are frequent (see above).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from billing.store import billing_store
from meterline.store import store
from tests.billing.events import add_events, setup
from tests.billing.test_invoices import alpha_january
from tests.support.postgres import create_database, postgres_server

BILLING = Path(sys.executable).with_name("billing")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with postgres_server() as conninfo:
        yield conninfo


@pytest.mark.parametrize("round_", range(3))
def test_runs_at_once_store_one_invoice_per_period(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, round_: int
) -> None:
    monkeypatch.setenv("METERLINE_LAKE_DATA", str(tmp_path / "data"))
    s = setup(tmp_path)
    add_events(s.db, *alpha_january())
    lake = f"ducklake:postgres:{create_database(server, f'invoicing{round_}')}"
    base = [str(BILLING), "--db", lake, "--catalog", str(s.catalog_path)]
    with billing_store(lake, create=True) as con:  # the lake and its schema, as a proxy makes
        con.execute(f"ATTACH '{s.db}' AS events_file (READ_ONLY)")
        con.execute("INSERT INTO usage_events SELECT * FROM events_file.usage_events")
    cmd = [*base, "invoice", "generate", "--period", "2026-01"]
    runs = [
        subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ
        )
        for _ in range(3)
    ]
    outputs = [run.communicate(timeout=180)[0] for run in runs]
    assert all(run.returncode == 0 for run in runs), outputs
    with store(lake) as con:
        invoices = con.execute("SELECT number, customer_key, total FROM invoices").fetchall()
        lines = con.execute("SELECT count(*) FROM invoice_lines").fetchone()
    assert [(n, c, str(t)) for n, c, t in invoices] == [("INV-000001", "alpha", "177.000000000000")]
    assert lines == (4,)
    assert sum("1 created" in out for out in outputs) == 1, outputs
