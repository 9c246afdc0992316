"""A store a newer Meterline migrated (its ``schema_migrations`` names a migration this
code does not know): commands that write refuse it, those that read warn once, and the
proxy's writer keeps its events in the spool. Before, all of them used it silently: a
newer events column (a token type counted apart) read 0 in what this code wrote, and
invoices were finalized without it (billed too little).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from addons.metering.spool import Spool
from addons.metering.writer import SpoolWriter
from billing.store import billing_store
from meterline.migrations import EVENT_MIGRATIONS, NewerStore, migrate
from meterline.store import store
from tests.billing.cli.runner import run
from tests.billing.events import Event, add_events, setup, utc

NEWER = "Warning: {db} was migrated by a newer Meterline (migrations this version does not know: "
REFUSED = (
    "Error: {db} was migrated by a newer Meterline (migrations this version does not know: "
    "{names}): upgrade Meterline to write to it\n"
)


def _migrated_by_a_newer_version(db: Path, *names: str) -> None:
    with store(db) as con:
        for name in names:
            con.execute("INSERT INTO schema_migrations VALUES (?, now()::TIMESTAMP)", [name])


@pytest.mark.parametrize(
    "names",
    [("0060_future_tokens",), ("0104_invoice_terms", "0060_future_tokens")],
    ids=["events", "billing"],
)
def test_commands_that_write_refuse_a_newer_store_and_readers_warn_once(
    tmp_path: Path, names: tuple[str, ...]
) -> None:
    s = setup(tmp_path)
    add_events(s.db, Event(utc("2026-01-05"), output=9000))
    _migrated_by_a_newer_version(s.db, *names)
    for args in (
        ("invoice", "generate", "--period", "2026-01"),
        ("credits", "grant", "--customer", "alpha", "--amount", "5.00"),
    ):
        result = run(s, *args)
        assert (result.exit_code, result.stderr, result.stdout) == (
            1,
            REFUSED.format(db=s.db, names=", ".join(sorted(names))),
            "",
        )
    with store(s.db, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM invoices").fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM credit_grants").fetchone() == (0,)
    result = run(s, "usage")
    assert result.exit_code == 0 and "agent-a" in result.stdout
    assert result.stderr.startswith(NEWER.format(db=s.db)) and result.stderr.count("\n") == 1


def test_the_proxys_writer_keeps_its_events_from_a_store_with_newer_events(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "e.duckdb"
    with store(db) as con:
        migrate(con, EVENT_MIGRATIONS)
    _migrated_by_a_newer_version(db, "0060_future_tokens")
    with store(db) as con, pytest.raises(NewerStore, match="0060_future_tokens"):
        migrate(con, EVENT_MIGRATIONS)
    spool = Spool(tmp_path / "spool")
    writer = SpoolWriter(spool, str(db), lock_wait_s=0.1)
    spool.append({"event_id": "a", "ts": "2026-03-01T12:00:00", "provider": "openai"})
    with caplog.at_level(logging.WARNING):
        assert not writer.flush()
    assert len(spool.sealed()) == 1
    assert caplog.messages[-1].endswith(
        "retrying): the store was migrated by a newer Meterline (migrations this version "
        "does not know: "
        "0060_future_tokens): upgrade Meterline to write to it"
    )
    assert "Traceback" not in caplog.text
    spool.close()
    with store(db, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM usage_events").fetchone() == (0,)


def test_billing_tables_of_a_newer_version_do_not_stop_the_proxys_writer(tmp_path: Path) -> None:
    """The writer knows no billing table: a newer billing migration is not its concern."""
    db = tmp_path / "e.duckdb"
    with billing_store(db, create=True):
        pass
    _migrated_by_a_newer_version(db, "0104_invoice_terms", "0001_lake_leases")
    with store(db) as con:
        assert migrate(con, EVENT_MIGRATIONS) == []
