"""The dashboard over a DuckLake (real PostgreSQL catalog): the same pages, the same JSON
as the CLI's against the same lake."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.billing.cli.runner import run
from tests.billing.events import Setup
from tests.dashboard.conftest import start_dashboard, stop
from tests.dashboard.seed import seeded
from tests.support.postgres import postgres_server


@pytest.fixture
def lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Setup, Path]]:
    data = tmp_path / "lake-data"
    monkeypatch.setenv("METERLINE_LAKE_DATA", str(data))  # this process's CLI runs
    with postgres_server() as conninfo:
        yield seeded(tmp_path, f"ducklake:postgres:{conninfo}"), data


def test_pages_on_a_lake_equal_the_cli(lake: tuple[Setup, Path]) -> None:
    s, data = lake
    server = start_dashboard(s, env={"METERLINE_LAKE_DATA": str(data)})
    try:
        jan = "from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z"
        cli = run(s, "timeline", "--from", "2026-01-01", "--to", "2026-02-01")
        assert server.json(f"/usage.json?{jan}") == json.loads(cli.stdout)
        assert server.json(f"/usage.json?{jan}")["totals"]["events"] == 6378
        cli = run(s, "unbilled", "--from", "2026-01-01", "--to", "2026-02-01")
        assert server.json(f"/unbilled.json?{jan}") == json.loads(cli.stdout)
        listed = json.loads(run(s, "invoice", "list", "--format", "json").stdout)
        assert [i["number"] for i in listed] == ["INV-000001", "INV-000002", "INV-000003"]
        page = server.json("/customers/alpha.json?at=2026-02-10")
        assert [i["number"] for i in page["invoices"]] == ["INV-000003", "INV-000001"]
        status, body = server.get("/customers/alpha?at=2026-02-10")
        assert status == 200 and b"Current period so far" in body
    finally:
        stop(server)
