"""A customer's key changed in the catalog after invoicing: refused, not billed again.

Renaming ``key: alpha`` to ``key: alpha2`` made a new customer to billing, whose every
period looked uninvoiced: the next run billed the in-advance fee alpha's last invoice had
billed, and the "never invoiced" note led to January's fee being billed twice. Real
DuckDB files; the catalogs differ only in the customer's key (or in whether the old
customer is kept).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from billing.errors import BillingError
from billing.invoices import generate_invoices
from billing.ledger import load_invoices
from billing.store import billing_store
from meterline.catalog import load_catalog
from tests.billing.events import Event, add_events, setup, utc, write

ALPHA = """
  - key: {key}
    name: Alpha Ltd
    currency: EUR
    consumers: [{consumers}]
    subscriptions: [{{plan: basic, start: "2026-01-01T00:00:00Z"{end}}}]
"""


def catalog(*customers: str) -> str:
    return f"""
    version: 1
    consumers: [{{name: agent-a}}]
    plans:
      - key: basic
        name: Basic
        currency: EUR
        billing_cadence: P1M
        rate_cards:
          - key: fee
            name: Platform fee
            price: {{type: flat, amount: "30.00", payment_term: in_advance}}
    customers:
{"".join(customers)}
    """


def alpha(key: str = "alpha", end: str = "", consumers: str = "agent-a") -> str:
    text = ALPHA.format(key=key, end=f', end: "{end}"' if end else "", consumers=consumers)
    return "\n".join("    " + line for line in text.splitlines())


def fees(db: Path) -> list[tuple[str, str, str]]:
    """(number, customer, total) of every stored invoice."""
    with billing_store(db) as con:
        return [(i.number or "", i.customer_key, f"{i.total}") for i in load_invoices(con)]


def test_a_renamed_customer_is_refused_not_billed_its_fees_again(tmp_path: Path) -> None:
    s = setup(tmp_path, catalog(alpha()))
    add_events(s.db, Event(utc("2026-01-10"), output=1000))
    with billing_store(s.db) as con:
        for month in ("2026-01", "2026-02", "2026-03"):
            generate_invoices(con, s.catalog, month, now=utc("2026-04-02"))
    before = fees(s.db)
    assert [n for n, _, _ in before] == ["INV-000001", "INV-000002", "INV-000003"]
    renamed = load_catalog(write(tmp_path / "renamed.yaml", catalog(alpha("alpha2"))))
    for month in ("2026-04", "2026-01"):
        with billing_store(s.db) as con, pytest.raises(BillingError) as refused:
            generate_invoices(con, renamed, month, now=utc("2026-05-02"))
        assert str(refused.value) == (
            "customer 'alpha2' bills consumer(s) agent-a, invoiced from 2026-01-01 to "
            "2026-04-01 to customer 'alpha', which is no longer in the catalog (INV-000001, "
            "INV-000002, INV-000003): invoicing it would bill those periods' flat fees "
            "again. Renamed? An invoiced customer's key cannot change: put back key: alpha "
            "(change its name instead). Another customer? Keep 'alpha' in the catalog"
        )
    assert fees(s.db) == before
    # the key put back: April's fee was on INV-000003, only May's is billed
    with billing_store(s.db) as con:
        generate_invoices(con, s.catalog, "2026-04", now=utc("2026-05-02"))
    assert fees(s.db)[-1] == ("INV-000004", "alpha", "30.00")


def test_another_customer_taking_the_consumer_is_invoiced_when_the_old_one_is_kept(
    tmp_path: Path,
) -> None:
    """The way on the refusal names for a customer that is not a rename: the old one
    stays in the catalog (its subscription ended, the consumer no longer its own), the new
    one is invoiced as before."""
    s = setup(tmp_path, catalog(alpha(end="2026-02-01T00:00:00Z")))
    add_events(s.db, Event(utc("2026-01-10"), output=1000))
    with billing_store(s.db) as con:
        generate_invoices(con, s.catalog, "2026-01", now=utc("2026-02-02"))
    beta = alpha("beta").replace("Alpha Ltd", "Beta")
    both = load_catalog(
        write(
            tmp_path / "both.yaml", catalog(alpha(end="2026-02-01T00:00:00Z", consumers=""), beta)
        )
    )
    with billing_store(s.db) as con:
        generate_invoices(con, both, "2026-01", now=utc("2026-02-02"))
    assert fees(s.db) == [("INV-000001", "alpha", "30.00"), ("INV-000002", "beta", "60.00")]


def test_a_customer_starting_where_the_old_ones_invoices_end_is_invoiced(
    tmp_path: Path,
) -> None:
    """No overlap in time: a consumer moved at a period boundary to a new customer, the
    old one dropped from the catalog, is billed by the new one from there."""
    s = setup(tmp_path, catalog(alpha(end="2026-02-01T00:00:00Z")))
    with billing_store(s.db) as con:
        generate_invoices(con, s.catalog, "2026-01", now=utc("2026-02-02"), require_usage=False)
    beta = alpha("beta").replace('"2026-01-01T00:00:00Z"', '"2026-02-01T00:00:00Z"')
    moved = load_catalog(write(tmp_path / "moved.yaml", catalog(beta)))
    with billing_store(s.db) as con:
        generate_invoices(con, moved, "2026-02", now=utc("2026-03-02"))
    assert fees(s.db) == [("INV-000001", "alpha", "30.00"), ("INV-000002", "beta", "60.00")]
