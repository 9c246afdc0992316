"""Stripe rules the first sync did not follow: saved errors, limits, 429s, messages.

Each rule is one the fake now enforces as Stripe documents it (tests/fakestripe).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import stripe
from click.testing import CliRunner, Result

from billing.cli import main as billing_cli
from billing.store import billing_store
from billing.stripe.client import StripeFailure, StripeGateway
from billing.stripe.idempotency import MAX_IDEMPOTENCY_KEY, customer_key_idem, idem
from tests.billing.stripe.conftest import CATALOG, Billed, CliFn, client_for, make_billed
from tests.billing.stripe.test_sync import assert_stripe_matches_ours, our_invoices, sync_rows
from tests.fakestripe import DEFAULT_API_KEY, FakeStripe


def first_line(result: Result, exit_code: int = 0) -> str:
    """The first line the sync printed, once it exited with ``exit_code``."""
    assert result.exit_code == exit_code, result.output
    return result.output.splitlines()[0]


def assert_draft_built_again(result: Result, draft_id: str) -> None:
    """The sync succeeded, and said first that it built INV-000001's deleted draft again."""
    assert first_line(result) == (
        f"INV-000001  acme  NOTE: Stripe draft {draft_id} was deleted in Stripe; "
        "building the invoice again"
    )


# --------------------------------------------------------------------------- saved 500s


@pytest.mark.parametrize(
    ("path", "nth", "retried_key"),
    [
        (r"^/v1/customers$", 1, "meterline-customer-acme~1"),
        (r"^/v1/invoices$", 1, "meterline-invoice-INV-000001~1"),
        (r"^/v1/invoiceitems$", 2, "meterline-item-INV-000001-2~1"),
        (r"/finalize$", 1, "meterline-finalize-INV-000001~1"),
    ],
)
def test_a_saved_500_is_not_replayed_by_the_next_run(
    cli: CliFn, fake: FakeStripe, billed: Billed, path: str, nth: int, retried_key: str
) -> None:
    """Stripe saves a 500 under its key and replays it for 24 hours, to the SDK's own
    retries too; the next run looks, finds nothing, and sends under a new key."""
    fake.inject("error_saved", nth=nth, method="POST", path=path)
    first = cli("sync", retries=2)
    assert first.exit_code == 1
    assert "HTTP 500 api_error" in first.output
    assert any(r.replayed and r.status == 500 for r in fake.log)  # the SDK's retries
    second = cli("sync", retries=2)
    assert second.exit_code == 0, second.output
    assert_stripe_matches_ours(fake, billed)
    assert retried_key in {r.idempotency_key for r in fake.log if r.status == 200}


def test_new_customer_key_only_after_a_consistent_listing(
    cli: CliFn, fake: FakeStripe, billed: Billed
) -> None:
    """The 500 hid a customer that was made after all, and search does not show it yet:
    the rerun must list (consistent), find it and link it, not create a second one."""
    fake.inject("error_saved", nth=1, method="POST", path=r"^/v1/customers$")
    assert cli("sync").exit_code == 1
    made = client_for(fake).v1.customers.create(
        {"name": "Acme Corp", "metadata": {"meterline_customer": "acme"}}
    )
    fake.state.not_indexed.add(made.id)
    assert cli("sync").exit_code == 0
    assert_stripe_matches_ours(fake, billed)
    acme = [
        c for c in fake.state.customers.values() if c["metadata"]["meterline_customer"] == "acme"
    ]
    assert [c["id"] for c in acme] == [made.id]


def test_no_answer_keeps_the_same_key(cli: CliFn, fake: FakeStripe, billed: Billed) -> None:
    """No answer: the request may still be running or its answer saved as a success, so
    the next create (after the lookup found nothing) reuses the key."""
    fake.inject("drop_before", nth=1, method="POST", path=r"^/v1/invoices$")
    assert cli("sync").exit_code == 1
    assert cli("sync").exit_code == 0
    keys = [r.idempotency_key for r in fake.log if r.path == "/v1/invoices" and r.method == "POST"]
    assert keys[:2] == ["meterline-invoice-INV-000001"] * 2
    assert_stripe_matches_ours(fake, billed)


# --------------------------------------------------------------------------- limits


def _many_fees_catalog(n: int) -> str:
    cards = "".join(
        f"      - key: fee-{i}\n        name: Fee {i}\n"
        '        price: {type: flat, amount: "1.00", payment_term: in_arrears}\n'
        for i in range(n)
    )
    plan = f"  - key: many\n    name: Many fees\n    currency: USD\n    rate_cards:\n{cards}"
    text = CATALOG.replace("plans:\n", f"plans:\n{plan}", 1)
    return text.replace(
        'subscriptions: [{plan: team-usd, start: "2026-09-01T00:00:00Z"}]\n'
        "    invoicing: {collection_method: send_invoice",
        'subscriptions: [{plan: many, start: "2026-09-01T00:00:00Z"}]\n'
        "    invoicing: {collection_method: send_invoice",
        1,
    )


def _run(billed: Billed, fake: FakeStripe, *args: str) -> Result:
    base = ["--db", str(billed.db), "--catalog", str(billed.catalog), "stripe"]
    extra = (
        ["--api-base", fake.url, "--max-network-retries", "0"] if "--dry-run" not in args else []
    )
    return CliRunner().invoke(billing_cli, [*base, *args, *extra], catch_exceptions=False)


def test_more_than_250_items_is_refused_up_front_and_the_others_still_go(
    fake: FakeStripe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", DEFAULT_API_KEY)
    billed = make_billed(tmp_path, _many_fees_catalog(251))
    line = (
        "INV-000001  acme  NOT SENT: 251 non-zero lines, but Stripe allows at most 250 "
        "invoice items per invoice"
    )
    dry = _run(billed, fake, "sync", "--dry-run")
    assert dry.exit_code == 1
    assert line in dry.output.splitlines()
    assert "Idempotency-Key: meterline-invoice-INV-000002" in dry.output
    assert fake.log == []

    result = _run(billed, fake, "sync")
    assert result.exit_code == 1
    out = result.output.splitlines()
    assert line in out
    assert out[-1] == "Error: 1 invoice(s) not sent: INV-000001; the reasons are above"
    assert not any("INV-000001" in f"{r.params} {r.idempotency_key}" for r in fake.log)
    rows = sync_rows(billed.db)
    assert rows["INV-000001"][0] == "new" and "251 non-zero lines" in rows["INV-000001"][6]
    assert {n: r[0] for n, r in rows.items() if n != "INV-000001"} == {
        "INV-000002": "finalized",
        "INV-000003": "finalized",
    }


def test_fake_refuses_a_251st_invoice_item(fake: FakeStripe) -> None:
    client = client_for(fake)
    cus = client.v1.customers.create({"name": "x"})
    inv = client.v1.invoices.create({"customer": cus.id, "currency": "usd"})
    for _ in range(250):
        client.v1.invoice_items.create(
            {"customer": cus.id, "invoice": inv.id, "amount": 1, "currency": "usd"}
        )
    with pytest.raises(stripe.InvalidRequestError, match="more than 250 invoice items"):
        client.v1.invoice_items.create(
            {"customer": cus.id, "invoice": inv.id, "amount": 1, "currency": "usd"}
        )


def test_a_long_customer_key_still_gets_keys_stripe_accepts(
    fake: FakeStripe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", DEFAULT_API_KEY)
    long_key = "acme-" + "x" * 300
    billed = make_billed(tmp_path, CATALOG.replace("key: acme\n", f"key: {long_key}\n"))
    result = _run(billed, fake, "sync")
    assert result.exit_code == 0, result.output
    keys = [r.idempotency_key or "" for r in fake.log if r.method == "POST"]
    assert max(len(k) for k in keys) <= MAX_IDEMPOTENCY_KEY
    assert customer_key_idem(long_key) in keys
    assert customer_key_idem(long_key) == customer_key_idem(long_key)  # same every run
    assert customer_key_idem(long_key) != customer_key_idem(long_key + "y")
    assert idem("customer", "acme", attempt=2) == "meterline-customer-acme~2"


@pytest.mark.parametrize(
    ("replace", "by", "expected"),
    [
        ("name: Acme Corp", "name: " + "N" * 300,
         "INV-000001  acme  NOT SENT: customer 'acme': its name has 300 characters, Stripe "
         "allows at most 256; shorten it in the catalog"),
        ("key: acme\n", "key: acme" + "x" * 500 + "\n",
         "customer key 'acmexxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...' has 504 characters, but it "
         "goes into Stripe metadata (meterline_customer), whose values are at most 500"),
    ],
)  # fmt: skip
def test_values_stripe_would_refuse_are_caught_before_any_call(
    fake: FakeStripe,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    replace: str,
    by: str,
    expected: str,
) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", DEFAULT_API_KEY)
    billed = make_billed(tmp_path, CATALOG.replace(replace, by))
    for args in (("sync", "--dry-run"), ("sync",)):
        result = _run(billed, fake, *args)
        assert result.exit_code == 1
        assert any(line.endswith(expected) for line in result.output.splitlines()), result.output
        assert result.output.splitlines()[-1].startswith("Error: 1 invoice(s) not sent: INV-000001")
    assert not [r for r in fake.log if r.status == 400]
    assert {n: r[0] for n, r in sync_rows(billed.db).items()}["INV-000003"] == "finalized"


# --------------------------------------------------------------------------- 429


def _gateway(fake: FakeStripe, sleeps: list[float]) -> StripeGateway:
    return StripeGateway(DEFAULT_API_KEY, fake.url, max_network_retries=0, sleep=sleeps.append)


def test_rate_limited_call_is_sent_again_with_backoff(fake: FakeStripe) -> None:
    for _ in range(3):
        fake.inject("rate_limited", method="POST", path=r"^/v1/customers$")
    sleeps: list[float] = []
    made = _gateway(fake, sleeps).create_customer({"name": "A"}, "k-1")
    assert sleeps == [0.5, 1.0, 2.0]
    assert [c["id"] for c in fake.state.customers.values()] == [made.id]
    assert {r.idempotency_key for r in fake.log} == {"k-1"}


def test_rate_limit_honours_retry_after_and_should_retry(fake: FakeStripe) -> None:
    fake.inject("rate_limited", method="POST", headers={"Retry-After": "3"})
    sleeps: list[float] = []
    gateway = _gateway(fake, sleeps)
    gateway.create_customer({"name": "A"}, "k-1")
    assert sleeps == [3.0]
    fake.inject("rate_limited", method="POST", headers={"Stripe-Should-Retry": "false"})
    with pytest.raises(StripeFailure, match="HTTP 429 rate_limit"):
        gateway.create_customer({"name": "B"}, "k-2")
    assert sleeps == [3.0]


def test_rate_limit_resends_are_bounded(fake: FakeStripe) -> None:
    for _ in range(10):
        fake.inject("rate_limited", method="GET")
    sleeps: list[float] = []
    with pytest.raises(StripeFailure, match="HTTP 429"):
        _gateway(fake, sleeps).retrieve_invoice("in_x")
    assert len(sleeps) == 5


def test_sync_goes_through_a_429(cli: CliFn, fake: FakeStripe, billed: Billed) -> None:
    fake.inject("rate_limited", nth=2, method="POST", path=r"^/v1/invoiceitems$")
    result = cli("sync")
    assert result.exit_code == 0, result.output
    assert_stripe_matches_ours(fake, billed)


# --------------------------------------------------------------------------- messages


def test_status_without_an_answer_names_the_invoice_and_the_command(
    cli: CliFn, fake: FakeStripe
) -> None:
    assert cli("sync").exit_code == 0
    fake.stop()
    result = cli("status")
    assert result.exit_code == 1
    line = result.output.strip()
    assert line.startswith("Error: INV-000001: Stripe retrieve invoice in_")
    assert line.endswith(
        "(connection error); check the network and --api-base, then run "
        "`billing stripe status` again"
    )
    assert "sync" not in line


@pytest.mark.parametrize(
    ("key", "why"),
    [
        (
            DEFAULT_API_KEY + "\nsecond line",
            "a line break (a secret file with more than one line?)",
        ),
        ("sk_test_mété", "a non-ASCII character"),
        ("sk_test_ab cd", "a space or a control character"),
    ],
)
@pytest.mark.parametrize("command", ["sync", "status"])
def test_a_malformed_api_key_is_named_not_a_connection_error(
    cli: CliFn, fake: FakeStripe, monkeypatch: pytest.MonkeyPatch, key: str, why: str, command: str
) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", key)
    result = cli(command)
    assert result.exit_code == 1
    assert result.output == (
        f"Error: STRIPE_API_KEY is not a valid Stripe key: it contains {why}; set it to the "
        "secret key alone, on one line (sk_test_... or sk_live_...)\n"
    )
    assert fake.log == []


def test_a_draft_deleted_in_stripe_is_built_again(
    cli: CliFn, fake: FakeStripe, billed: Billed
) -> None:
    """docs/stripe.md tells users to delete a half-built draft in Stripe; before, every
    later sync stopped at "retrieve invoice ... 404" and no invoice was sent again."""
    fake.inject("error_saved", nth=2, method="POST", path=r"^/v1/invoiceitems$")
    assert cli("sync").exit_code == 1
    (draft,) = [i for i in fake.state.invoices.values() if i["status"] == "draft"]
    client_for(fake).v1.invoices.delete(draft["id"])
    again = cli("sync")
    assert again.exit_code == 0, again.output
    assert_stripe_matches_ours(fake, billed)
    assert draft["id"] not in fake.state.invoices
    keys = {r.idempotency_key for r in fake.log if r.status == 200}
    assert "meterline-invoice-INV-000001~1" in keys  # not the deleted draft's key again


def test_a_flagged_draft_deleted_in_stripe_is_built_again(
    cli: CliFn, fake: FakeStripe, billed: Billed
) -> None:
    """A flagged draft (someone added an item) that the user then deletes in Stripe used
    to make every later sync fail with "retrieve invoice ... 404" forever."""
    fake.inject("drop_before", nth=1, method="POST", path=r"^/v1/invoiceitems$")
    assert cli("sync", "--customer", "acme").exit_code == 1
    client = client_for(fake)
    draft = client.v1.invoices.list().data[0]
    client.v1.invoice_items.create(
        {"customer": draft.customer, "invoice": draft.id, "amount": 1, "currency": "usd"}
    )
    assert cli("sync", "--customer", "acme").exit_code == 1
    assert sync_rows(billed.db)["INV-000001"][0] == "flagged"
    client.v1.invoices.delete(draft.id)
    again = cli("sync")
    assert_draft_built_again(again, draft.id)
    assert_stripe_matches_ours(fake, billed)
    assert sync_rows(billed.db)["INV-000001"][5] is None  # the flag's reason is gone
    keys = {r.idempotency_key for r in fake.log if r.status == 200}
    assert "meterline-invoice-INV-000001~1" in keys


def test_an_item_deleted_from_the_draft_is_added_again(
    cli: CliFn, fake: FakeStripe, billed: Billed
) -> None:
    """The sync used to trust its own table of written items: an item a user deleted
    from the draft was never sent again, and the invoice stayed flagged for good."""
    fake.inject("drop_before", nth=1, method="POST", path=r"/finalize$")
    assert cli("sync", "--customer", "acme").exit_code == 1
    client = client_for(fake)
    draft = client.v1.invoices.list().data[0]
    on_draft = client.v1.invoice_items.list({"invoice": draft.id}).data
    items = {int(i.metadata["meterline_line"]): i.id for i in on_draft}
    gone = items[2]
    client.v1.invoice_items.delete(gone)
    again = cli("sync")
    assert first_line(again) == (
        f"INV-000001  acme  NOTE: invoice item {gone} (line 2) was deleted from Stripe draft "
        f"{draft.id}; adding it again"
    )
    assert_stripe_matches_ours(fake, billed)  # one item per line: none duplicated
    keys = {r.idempotency_key for r in fake.log if r.status == 200}
    assert "meterline-item-INV-000001-2~1" in keys  # not the deleted item's key again


def test_a_lost_draft_deleted_in_stripe_is_built_again_in_the_same_run(
    cli: CliFn, fake: FakeStripe, billed: Billed
) -> None:
    """The answer to the draft's create was lost (no id stored) and the user deleted the
    empty draft: the next create re-sent the old key, Stripe replayed the deleted draft,
    and the sync stored it and failed on its first item (404); only a third run
    built the invoice."""
    fake.inject("drop_after", nth=1, method="POST", path=r"^/v1/invoices$")
    assert cli("sync", "--customer", "acme").exit_code == 1
    client = client_for(fake)
    (draft,) = client.v1.invoices.list().data
    client.v1.invoices.delete(draft.id)
    again = cli("sync")
    assert_draft_built_again(again, draft.id)
    assert_stripe_matches_ours(fake, billed)
    keys = [r.idempotency_key for r in fake.log if r.method == "POST" and r.status == 200]
    assert keys.count("meterline-invoice-INV-000001") == 2  # made, then replayed
    assert "meterline-invoice-INV-000001~1" in keys


def test_a_lost_item_deleted_in_stripe_is_added_again_in_the_same_run(
    cli: CliFn, fake: FakeStripe, billed: Billed
) -> None:
    """The answer to an item's create was lost and the user deleted that item from the
    draft: the next run re-sent the old key, stored the replayed (deleted) item as done,
    and flagged the invoice for good ("totals differ")."""
    fake.inject("drop_after", nth=1, method="POST", path=r"^/v1/invoiceitems$")
    assert cli("sync", "--customer", "acme").exit_code == 1
    client = client_for(fake)
    (draft,) = client.v1.invoices.list().data
    (item,) = client.v1.invoice_items.list({"invoice": draft.id}).data
    line = item.metadata["meterline_line"]
    client.v1.invoice_items.delete(item.id)
    again = cli("sync")
    assert first_line(again) == (
        f"INV-000001  acme  NOTE: invoice item {item.id} (line {line}) was deleted from "
        f"Stripe draft {draft.id}; adding it again"
    )
    assert_stripe_matches_ours(fake, billed)
    keys = {r.idempotency_key for r in fake.log if r.method == "POST" and r.status == 200}
    assert f"meterline-item-INV-000001-{line}~1" in keys


def test_a_replay_of_this_runs_own_create_is_kept(
    cli: CliFn, fake: FakeStripe, billed: Billed
) -> None:
    """The SDK's retry of a create that got no answer is replayed too; that object is
    there, so it is kept and nothing is made twice."""
    fake.inject("drop_after", nth=1, method="POST", path=r"^/v1/invoices$")
    fake.inject("drop_after", nth=1, method="POST", path=r"^/v1/invoiceitems$")
    result = cli("sync", retries=1)
    assert result.exit_code == 0, result.output
    assert "NOTE" not in result.output
    assert_stripe_matches_ours(fake, billed)


def test_a_relinked_customer_gets_its_half_built_draft_built_again(
    cli: CliFn, fake: FakeStripe, billed: Billed
) -> None:
    """A customer deleted in Stripe and relinked as the error advises (its row removed
    from stripe_customers) kept its half-built draft, which belongs to the deleted
    customer: every later run failed "The invoice belongs to another customer"."""
    fake.inject("drop_before", nth=2, method="POST", path=r"^/v1/invoiceitems$")
    assert cli("sync", "--customer", "acme").exit_code == 1
    client = client_for(fake)
    (draft,) = client.v1.invoices.list().data
    client.v1.customers.delete(draft.customer)
    assert cli("sync", "--customer", "acme").exit_code == 1
    with billing_store(billed.db) as con:
        con.execute("DELETE FROM stripe_customers WHERE customer_key = 'acme'")
    # linked by hand (within 24 hours a create would replay the deleted customer)
    relinked = client.v1.customers.create(
        {"name": "Acme Corp", "metadata": {"meterline_customer": "acme"}}
    )
    again = cli("sync")
    assert first_line(again) == (
        f"INV-000001  acme  NOTE: Stripe draft {draft.id} belongs to customer "
        f"{draft.customer}, not to the linked customer {relinked.id}; deleted it, building "
        "the invoice again"
    )
    assert draft.id not in fake.state.invoices
    assert_stripe_matches_ours(fake, billed)
    keys = {r.idempotency_key for r in fake.log if r.method == "POST" and r.status == 200}
    assert "meterline-invoice-INV-000001~1" in keys


def test_a_draft_finalized_and_voided_by_someone_else_is_issued_again(
    cli: CliFn, fake: FakeStripe, billed: Billed
) -> None:
    """A half-built draft finalized in Stripe by a user was flagged "not finalized:
    Stripe total ... != our total" though Stripe showed it open, and after the user
    voided it, flagged so forever: no run could issue the invoice again."""
    fake.inject("drop_before", nth=2, method="POST", path=r"^/v1/invoiceitems$")
    assert cli("sync", "--customer", "acme").exit_code == 1
    client = client_for(fake)
    (draft,) = client.v1.invoices.list().data
    partial = client.v1.invoices.finalize_invoice(draft.id)
    theirs = f"{partial.total // 100}.{partial.total % 100:02d} USD"
    flagged = cli("sync", "--customer", "acme")
    assert first_line(flagged, 1) == (
        f"INV-000001  acme  FLAGGED, not finalized: {draft.id} was finalized in Stripe by "
        f"someone else with total {theirs}, ours 55.42 USD: void it in Stripe and run "
        "`billing stripe sync` to issue it again"
    )
    client.v1.invoices.void_invoice(draft.id)
    again = cli("sync")
    assert first_line(again) == (
        f"INV-000001  acme  NOTE: Stripe invoice {draft.id} was finalized by someone else "
        f"with total {theirs} and voided; building the invoice again"
    )
    ours = our_invoices(billed.db)["INV-000001"]
    (issued,) = [
        i
        for i in client.v1.invoices.list({"limit": 100}).data
        if i.metadata["meterline_invoice"] == "INV-000001" and i.status == "open"
    ]
    assert issued.total == ours["total"]
    assert {int(li.metadata["meterline_line"]): li.amount for li in issued.lines.data} == {
        n: a for n, a in ours["lines"].items() if a
    }
    assert client.v1.invoices.retrieve(draft.id).status == "void"
    assert sync_rows(billed.db)["INV-000001"][:3] == ("finalized", "open", issued.id)
    keys = {r.idempotency_key for r in fake.log if r.method == "POST" and r.status == 200}
    assert "meterline-invoice-INV-000001~1" in keys
    assert cli("sync").output.strip() == "nothing to sync: every finalized invoice is in Stripe"


def test_a_run_stopped_by_no_answer_still_names_the_invoices_that_failed_before(
    cli: CliFn, fake: FakeStripe, billed: Billed
) -> None:
    """The final error named only the invoice whose call got no answer: an invoice that
    had failed earlier in the run was left out of the summary."""
    fake.inject("error_saved", nth=2, method="POST", path=r"^/v1/invoiceitems$")
    fake.inject("drop_before", nth=3, method="POST", path=r"^/v1/invoices$")
    result = cli("sync")
    assert first_line(result, 1).startswith("INV-000001  acme  FAILED: ")
    error = result.output.splitlines()[-1]
    assert error.startswith("Error: INV-000003: Stripe create invoice failed: no answer")
    assert error.endswith(
        "; run the sync again, it resumes where it stopped; before that: 1 invoice(s) "
        "failed: INV-000001; the reasons are above"
    )


def test_fake_deletes_items_only_from_drafts(fake: FakeStripe) -> None:
    client = client_for(fake)
    cus = client.v1.customers.create({"name": "x"})
    invoice = client.v1.invoices.create({"customer": cus.id, "currency": "usd"})
    kept = client.v1.invoice_items.create(
        {"customer": cus.id, "invoice": invoice.id, "amount": 500, "currency": "usd"}
    )
    dropped = client.v1.invoice_items.create(
        {"customer": cus.id, "invoice": invoice.id, "amount": 200, "currency": "usd"}
    )
    client.v1.invoice_items.delete(dropped.id)
    assert client.v1.invoices.retrieve(invoice.id).total == 500
    client.v1.invoices.finalize_invoice(invoice.id)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoice_items.delete(kept.id)


# --------------------------------------------------------------------------- invalid values, 409


@pytest.mark.parametrize(
    ("path", "params", "param", "code"),
    [
        ("customers", {"name": "A", "email": "not-an-address"}, "email", "email_invalid"),
        ("invoice_items", {"amount": 100, "currency": "zzz"}, "currency", None),
        ("invoice_items", {"amount": 10**15, "currency": "usd"}, "amount", "amount_too_large"),
        ("invoice_items", {"amount": -(10**8), "currency": "usd"}, "amount", "amount_too_large"),
    ],
)
def test_fake_refuses_values_stripe_refuses(
    fake: FakeStripe, path: str, params: dict, param: str, code: str | None
) -> None:
    """The fake took any email, currency ``zzz`` and an amount of 10^15; Stripe refuses
    them as invalid parameters, and saves nothing under the key."""
    client = client_for(fake)
    if path == "invoice_items":
        params = {"customer": client.v1.customers.create({"name": "A"}).id, **params}
    resource = getattr(client.v1, path)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        resource.create(params, {"idempotency_key": "k-1"})
    error = refused.value.error
    assert refused.value.http_status == 400
    assert (error.type, error.param, error.code) == ("invalid_request_error", param, code)
    fixed = {**params, param: {"email": "a@example.com", "currency": "usd"}.get(param, 99_999_999)}
    assert resource.create(fixed, {"idempotency_key": "k-1"}).id  # nothing was saved


def test_fake_answers_409_while_a_request_with_the_key_is_in_flight(fake: FakeStripe) -> None:
    hold = fake.inject("hold_before", method="POST", path=r"^/v1/customers$")
    client = client_for(fake)
    made: list[str] = []
    first = threading.Thread(
        target=lambda: made.append(
            client.v1.customers.create({"name": "A"}, {"idempotency_key": "k-1"}).id
        )
    )
    first.start()
    assert hold.done.wait(10)
    with pytest.raises(stripe.StripeError) as busy:
        client.v1.customers.create({"name": "A"}, {"idempotency_key": "k-1"})
    assert busy.value.http_status == 409
    assert busy.value.error.code == "idempotency_key_in_use"
    fake.release()
    first.join(10)
    again = client.v1.customers.create({"name": "A"}, {"idempotency_key": "k-1"})
    assert [again.id] == made == list(fake.state.customers)


def test_key_in_use_is_sent_again_after_a_wait(fake: FakeStripe) -> None:
    for _ in range(2):
        fake.inject("key_in_use", method="POST", path=r"^/v1/customers$")
    sleeps: list[float] = []
    made = _gateway(fake, sleeps).create_customer({"name": "A"}, "k-1")
    assert sleeps == [0.5, 1.0]
    assert list(fake.state.customers) == [made.id]


def test_sync_goes_through_a_409(cli: CliFn, fake: FakeStripe, billed: Billed) -> None:
    fake.inject("key_in_use", nth=2, method="POST", path=r"^/v1/invoiceitems$")
    result = cli("sync")
    assert result.exit_code == 0, result.output
    assert_stripe_matches_ours(fake, billed)
    assert [r.status for r in fake.log if r.fault == "key_in_use"] == [409]
