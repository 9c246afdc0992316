"""A consumer moved to another customer in the catalog: each event is billed once.

The rule (billing/usage/owned.py): a (consumer, event time) an invoice window of one
customer already covers belongs to that customer; windows of other customers leave it
out, whatever the events' ingestion time, and the owner's late sweeps bill its late
events. Real DuckDB files; the catalogs differ only in who lists ``agent-a``.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from billing.documents.statement import feature_usage
from billing.invoices import explain_line, generate_invoices, get_invoice, list_invoices
from billing.ledger import load_invoices
from billing.store import billing_store
from billing.usage import UsageQuery, invoiced_usage, usage_report
from meterline.catalog import Catalog, load_catalog
from tests.billing.events import Event, add_events, setup, utc, write


def catalog(alpha: list[str], beta: list[str], beta_start: str = "2026-01-01") -> str:
    return f"""
    version: 1
    consumers: [{{name: agent-a}}, {{name: agent-b}}, {{name: agent-c}}]
    features:
      - key: out
        name: Output
        meter: {{provider: openai, model: "gpt-4o*", token_types: [output]}}
    plans:
      - key: p
        name: P
        currency: USD
        billing_cadence: P1M
        rate_cards:
          - key: out
            name: Output
            feature: out
            price: {{type: unit, amount: "1.00", per: 1000}}
    customers:
      - key: alpha
        name: Alpha
        currency: USD
        consumers: {alpha}
        subscriptions: [{{plan: p, start: "2026-01-01T00:00:00Z"}}]
      - key: beta
        name: Beta
        currency: USD
        consumers: {beta}
        subscriptions: [{{plan: p, start: "{beta_start}T00:00:00Z"}}]
    """


def generate(db: Path, cat: Catalog, month: str, now: str, customer: str | None = None) -> None:
    with billing_store(db) as con:
        generate_invoices(con, cat, month, customer=customer, now=utc(now))


def lines(db: Path) -> dict[str, list[tuple[str, str, Decimal]]]:
    """Number -> (customer, kind, quantity) of its usage lines."""
    with billing_store(db) as con:
        return {
            inv.number or "": [(inv.customer_key, ln.kind, ln.quantity) for ln in inv.lines]
            for inv in load_invoices(con)
        }


def explained(db: Path, number: str, line_no: int) -> list[str]:
    with billing_store(db) as con:
        return [str(e["event_id"]) for e in explain_line(con, number, line_no).events]


def test_a_moved_consumers_invoiced_usage_is_not_billed_again(tmp_path: Path) -> None:
    s = setup(tmp_path, catalog(["agent-a", "agent-c"], ["agent-b"]))
    moved = load_catalog(
        write(tmp_path / "moved.yaml", catalog(["agent-c"], ["agent-b", "agent-a"]))
    )
    jan = Event(utc("2026-01-10"), output=1000)
    add_events(s.db, jan, Event(utc("2026-01-12"), consumer="agent-b", output=300))
    generate(s.db, s.catalog, "2026-01", "2026-02-01T00:00:05", customer="alpha")
    # agent-a moves to beta; beta's January is invoiced afterwards: only agent-b's usage
    generate(s.db, moved, "2026-01", "2026-02-01T00:00:09")
    late = Event(utc("2026-01-20"), output=500, ingested_at=utc("2026-02-15"))
    feb = Event(utc("2026-02-10"), output=2000)
    add_events(s.db, late, feb)
    generate(s.db, moved, "2026-02", "2026-03-01T00:00:05")
    assert lines(s.db) == {
        "INV-000001": [("alpha", "usage", Decimal(1000))],
        "INV-000002": [("beta", "usage", Decimal(300))],  # not agent-a's 1,000 again
        # January's late event is alpha's: its window covered agent-a in January
        "INV-000003": [("alpha", "usage", Decimal(0)), ("alpha", "late_usage", Decimal(500))],
        "INV-000004": [("beta", "usage", Decimal(2000))],  # no late line for January
    }
    assert explained(s.db, "INV-000001", 1) == [jan.event_id]
    assert len(explained(s.db, "INV-000002", 1)) == 1  # agent-b's
    assert explained(s.db, "INV-000003", 2) == [late.event_id]
    assert explained(s.db, "INV-000004", 1) == [feb.event_id]
    with billing_store(s.db) as con:
        numbers = [i.number or "" for i in list_invoices(con)]
        billed = {
            (r["customer_key"], str(r["day"])): r["output"] for r in invoiced_usage(con, numbers)
        }
        charts = feature_usage(con, [get_invoice(con, "INV-000002")])
    assert billed == {  # margin's figures: each event once, under the customer that billed it
        ("alpha", "2026-01-10"): 1000,
        ("alpha", "2026-01-20"): 500,
        ("beta", "2026-01-12"): 300,
        ("beta", "2026-02-10"): 2000,
    }
    [chart] = charts  # beta's January statement: agent-b's 300 tokens only
    assert chart.total == 300


def test_usage_a_moved_consumers_new_customer_does_not_cover_is_unbilled_once(
    tmp_path: Path,
) -> None:
    """agent-a moves to beta, whose subscription starts Feb 15, before February is
    invoiced: its Feb 10 usage is on no invoice (listed), its January usage is alpha's
    (billed: not listed, although beta's subscription does not cover it now)."""
    s = setup(tmp_path, catalog(["agent-a", "agent-c"], ["agent-b"], "2026-02-15"))
    moved = load_catalog(
        write(tmp_path / "moved.yaml", catalog(["agent-c"], ["agent-a"], "2026-02-15"))
    )
    add_events(s.db, Event(utc("2026-01-10"), output=1000))
    generate(s.db, s.catalog, "2026-01", "2026-02-01T00:00:05")
    add_events(s.db, Event(utc("2026-02-10"), output=2000), Event(utc("2026-02-20"), output=4))
    generate(s.db, moved, "2026-02", "2026-03-01T00:00:05")
    assert lines(s.db)["INV-000002"] == [("alpha", "usage", Decimal(0))]
    with billing_store(s.db) as con:
        rows = usage_report(con, moved, UsageQuery(unbilled=True))
    assert [(r["reason"], r["consumer"], r["customer"], r["output"]) for r in rows] == [
        ("outside subscriptions", "agent-a", "beta", 2000)
    ]
