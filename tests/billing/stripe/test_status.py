"""``billing stripe status`` pulls each synced invoice's Stripe status home."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from billing.cli import main as billing_cli
from billing.store import billing_store
from tests.billing.stripe.conftest import Billed, CliFn, client_for
from tests.fakestripe import FakeStripe


def stored_statuses(billed: Billed) -> dict[str, str]:
    with billing_store(billed.db) as con:
        rows = con.execute(
            "SELECT invoice_number, stripe_status FROM stripe_invoices"
            " WHERE status_checked_at IS NOT NULL"
        ).fetchall()
    return dict(rows)


def test_status_pulls_paid_void_and_uncollectible(
    cli: CliFn, fake: FakeStripe, billed: Billed
) -> None:
    assert cli("sync").exit_code == 0
    client = client_for(fake)
    ids = {i.metadata["meterline_invoice"]: i.id for i in client.v1.invoices.list().data}
    client.v1.invoices.pay(ids["INV-000001"])
    client.v1.invoices.void_invoice(ids["INV-000002"])
    client.v1.invoices.mark_uncollectible(ids["INV-000003"])

    result = cli("status")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"INV-000001  acme  {ids['INV-000001']}  open -> paid",
        f"INV-000002  globex  {ids['INV-000002']}  open -> void",
        f"INV-000003  umbrella  {ids['INV-000003']}  open -> uncollectible",
    ]
    assert stored_statuses(billed) == {
        "INV-000001": "paid",
        "INV-000002": "void",
        "INV-000003": "uncollectible",
    }
    again = cli("status")
    assert again.output.splitlines()[0] == f"INV-000001  acme  {ids['INV-000001']}  paid"
    assert [r.method for r in fake.log[-3:]] == ["GET", "GET", "GET"]


def test_status_filters_by_customer(cli: CliFn, fake: FakeStripe, billed: Billed) -> None:
    assert cli("sync").exit_code == 0
    result = cli("status", "--customer", "globex")
    assert len(result.output.splitlines()) == 1
    assert result.output.startswith("INV-000002  globex  in_")
    assert set(stored_statuses(billed)) == {"INV-000002"}


def test_status_before_any_sync(cli: CliFn, fake: FakeStripe) -> None:
    result = cli("status")
    assert result.exit_code == 0
    assert result.output == "no invoice in Stripe yet: run `billing stripe sync`\n"
    assert fake.log == []


def test_status_needs_the_api_key(
    cli: CliFn, fake: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STRIPE_API_KEY")
    result = cli("status")
    assert result.exit_code == 1
    assert result.output.startswith("Error: STRIPE_API_KEY is not set")


def test_invoice_list_shows_the_pulled_stripe_status(
    cli: CliFn, fake: FakeStripe, billed: Billed
) -> None:
    """The contract with ``billing invoice list``: it LEFT JOINs stripe_invoices."""
    assert cli("sync").exit_code == 0
    client = client_for(fake)
    paid = next(i for i in client.v1.invoices.list().data if i.total == 4900)
    client.v1.invoices.pay(paid.id)
    assert cli("status").exit_code == 0
    listed = CliRunner().invoke(
        billing_cli,
        ["--db", str(billed.db), "--catalog", str(billed.catalog), "invoice", "list",
         "--format", "json"],
    )  # fmt: skip
    assert listed.exit_code == 0, listed.output
    statuses = {row["number"]: row["stripe_status"] for row in json.loads(listed.output)}
    assert statuses == {"INV-000001": "open", "INV-000002": "paid", "INV-000003": "open"}


def test_status_reports_a_draft_deleted_in_stripe_and_goes_on(
    cli: CliFn, fake: FakeStripe, billed: Billed
) -> None:
    """`status` used to stop at the first draft deleted in Stripe (404), so no later
    invoice's status was pulled."""
    fake.inject("error_saved", nth=1, method="POST", path=r"/finalize$")
    assert cli("sync").exit_code == 1  # acme's stays a draft, the others are finalized
    client = client_for(fake)
    ids = {i.metadata["meterline_invoice"]: i.id for i in client.v1.invoices.list().data}
    client.v1.invoices.delete(ids["INV-000001"])
    result = cli("status")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"INV-000001  acme  {ids['INV-000001']}  draft -> deleted in Stripe; "
        "`billing stripe sync` builds it again",
        f"INV-000002  globex  {ids['INV-000002']}  open",
        f"INV-000003  umbrella  {ids['INV-000003']}  open",
    ]
    assert stored_statuses(billed)["INV-000001"] == "deleted"
