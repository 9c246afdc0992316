"""``billing entitlements``: the ``(prepaid credit)`` row gives the figures the proxy
enforces, the earlier periods no invoice billed yet included."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from billing.entitlements import entitlement_rows
from billing.store import billing_store
from meterline.catalog import Catalog
from meterline.entitlements import Counters, Refusal, Reservation, build_policy
from meterline.entitlements.reading import read_snapshot
from tests.billing.events import Event, add_events
from tests.meterline.entitlements.test_counters import NOW, catalog
from tests.meterline.entitlements.test_windows import FEB, PREPAID

MARCH = datetime(2026, 3, 5, tzinfo=UTC)  # in NOW's period [Feb 28, Mar 31)


def _grant(
    db: Path,
    grant_id: str,
    amount: str,
    expires: str | None = None,
    granted: str = "2026-01-31 00:00:00",
) -> None:
    with billing_store(db) as con:
        con.execute(
            "INSERT INTO credit_grants (grant_id, seq, customer_key, currency, amount, priority, "
            "expires_at, granted_at, granted_by, reason) VALUES (?, ?, 'acme', 'USD', ?, 10, "
            "?, ?, 'test', 'test')",
            [grant_id, int(grant_id[1:]), Decimal(amount), expires, granted],
        )


def _credit_row(db: Path, cat: Catalog) -> dict[str, Any]:
    with billing_store(db) as con:
        rows = entitlement_rows(con, cat, customer="acme", now=NOW)
    (row,) = [r for r in rows if r["feature"] == "(prepaid credit)"]
    return {k: row[k] for k in ("limit", "used", "remaining", "credit_balance")}


def _proxy_admits(db: Path, cat: Catalog) -> bool:
    """Whether the proxy's counters, read from the same store, admit a small call now."""
    policy = build_policy(cat, NOW)
    counters = Counters()
    with billing_store(db) as con:
        counters.apply(read_snapshot(con, policy, NOW, counters.pending_ids))
    decided = counters.admit(policy.by_consumer["bot"], "openai", "gpt-4o", 0, 1, NOW)
    assert isinstance(decided, Reservation | Refusal)
    return isinstance(decided, Reservation)


def test_prepaid_credit_used_by_earlier_periods_not_invoiced_is_not_remaining(
    tmp_path: Path,
) -> None:
    """1.00 USD granted, 1.20 USD of February's usage not invoiced yet: the proxy refuses
    every March call (the credit is February's invoice's), and the report said
    ``used 0.00, remaining 1.00``. It says ``used 1.20, remaining 0.00`` now."""
    db = tmp_path / "store.duckdb"
    cat = catalog(**PREPAID)
    add_events(db, Event(ts=FEB, consumer="bot", output=120, event_id="feb"))
    _grant(db, "g1", "1.00")
    assert not _proxy_admits(db, cat)
    assert _credit_row(db, cat) == {
        "limit": Decimal("1.00"),
        "used": Decimal("1.20"),
        "remaining": Decimal("0.00"),
        "credit_balance": Decimal("1.00"),
    }


def test_prepaid_remaining_is_what_the_proxy_still_admits(tmp_path: Path) -> None:
    """5.00 granted; February used 1.20 (not invoiced), March 0.30 so far: 3.50 left for
    March, the figure the proxy admits up to (a 3.50 call is the last one admitted)."""
    db = tmp_path / "store.duckdb"
    cat = catalog(**PREPAID)
    add_events(
        db,
        Event(ts=FEB, consumer="bot", output=120, event_id="feb"),
        Event(ts=MARCH, consumer="bot", output=30, event_id="mar"),
    )
    _grant(db, "g1", "5.00")
    assert _credit_row(db, cat) == {
        "limit": Decimal("5.00"),
        "used": Decimal("1.50"),
        "remaining": Decimal("3.50"),
        "credit_balance": Decimal("5.00"),
    }
    add_events(db, Event(ts=MARCH, consumer="bot", output=349, event_id="mar-2"))
    assert _proxy_admits(db, cat)
    assert _credit_row(db, cat)["remaining"] == Decimal("0.01")
    add_events(db, Event(ts=MARCH, consumer="bot", output=1, event_id="mar-3"))
    assert not _proxy_admits(db, cat)
    assert _credit_row(db, cat)["remaining"] == Decimal("0.00")


def test_an_expired_grant_pays_the_earlier_period_and_the_fresh_one_remains(
    tmp_path: Path,
) -> None:
    """February's 10.00 grant expired when March began and will pay February's 9.00; a
    fresh 10.00 is March's whole: the report, like the proxy, leaves it all remaining."""
    db = tmp_path / "store.duckdb"
    cat = catalog(**PREPAID)
    add_events(db, Event(ts=FEB, consumer="bot", output=900, event_id="feb"))
    _grant(db, "g1", "10.00", "2026-02-28 00:00:00")
    _grant(db, "g2", "10.00")
    assert _proxy_admits(db, cat)
    assert _credit_row(db, cat) == {
        "limit": Decimal("10.00"),
        "used": Decimal("9.00"),
        "remaining": Decimal("10.00"),
        "credit_balance": Decimal("10.00"),
    }


def test_a_reading_of_a_past_instant_takes_february_as_not_invoiced_then(
    tmp_path: Path,
) -> None:
    """The reading at NOW (10 March) stays what it was once February is invoiced on 20
    March (taking the 1.00 grant) and 5.00 more is granted that day: February was not
    invoiced at NOW, and the grant did not exist."""
    db = tmp_path / "store.duckdb"
    cat = catalog(**PREPAID)
    add_events(db, Event(ts=FEB, consumer="bot", output=120, event_id="feb"))
    _grant(db, "g1", "1.00")
    before = _credit_row(db, cat)
    with billing_store(db) as con:
        con.execute(
            "INSERT INTO invoices VALUES ('INV-000001', 1, 'acme', 'USD', "
            "TIMESTAMP '2026-01-31 00:00:00', TIMESTAMP '2026-02-28 00:00:00', "
            "TIMESTAMP '2026-03-20 00:00:00', TIMESTAMP '2026-03-20 00:00:00', 'finalized', "
            "0.20, 'x')"
        )
        con.execute(
            "INSERT INTO credit_consumptions VALUES ('INV-000001', 'g1', 'acme', 1.00, "
            "TIMESTAMP '2026-03-20 00:00:00')"
        )
    _grant(db, "g2", "5.00", granted="2026-03-20 00:00:00")
    assert (
        _credit_row(db, cat)
        == before
        == {
            "limit": Decimal("1.00"),
            "used": Decimal("1.20"),
            "remaining": Decimal("0.00"),
            "credit_balance": Decimal("1.00"),
        }
    )
