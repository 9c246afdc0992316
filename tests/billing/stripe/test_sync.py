"""``billing stripe sync`` against the stateful fake Stripe, through the real SDK.

Expected values come from the invoices ``generate_invoices`` stored (our lines, in
minor units), never typed in; Stripe's state is read back with the SDK.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from billing.money import minor_unit_exponent
from billing.store import billing_store
from tests.billing.events import Event, add_events, utc
from tests.billing.stripe.conftest import Billed, CliFn, client_for
from tests.fakestripe import DEFAULT_API_KEY, FakeStripe

REPO = Path(__file__).resolve().parents[3]


def minor(amount: Decimal, currency: str) -> int:
    return int(amount.scaleb(minor_unit_exponent(currency)))


def our_invoices(db: Path) -> dict[str, dict]:
    """number -> {customer, currency, total (minor), lines {line_no: minor amount}}."""
    with billing_store(db) as con:
        heads = con.execute("SELECT number, customer_key, currency, total FROM invoices").fetchall()
        lines = con.execute("SELECT invoice_number, line_no, amount FROM invoice_lines").fetchall()
    out = {
        n: {"customer": c, "currency": cur, "total": minor(t, cur), "lines": {}}
        for n, c, cur, t in heads
    }
    for n, line_no, amount in lines:
        out[n]["lines"][line_no] = minor(amount, out[n]["currency"])
    return out


def sync_rows(db: Path) -> dict[str, tuple]:
    with billing_store(db) as con:
        rows = con.execute(
            "SELECT invoice_number, state, stripe_status, stripe_invoice_id, our_total_minor,"
            " stripe_total_minor, flagged_reason, last_error FROM stripe_invoices"
        ).fetchall()
    return {r[0]: r[1:] for r in rows}


def assert_stripe_matches_ours(fake: FakeStripe, billed: Billed) -> None:
    """One customer per our customer, one finalized invoice per ours, items = non-zero lines."""
    client = client_for(fake)
    ours = our_invoices(billed.db)
    customers = list(client.v1.customers.list({"limit": 100}).auto_paging_iter())
    keys = Counter(c.metadata["meterline_customer"] for c in customers)
    assert keys == Counter({inv["customer"]: 1 for inv in ours.values()})
    invoices = list(client.v1.invoices.list({"limit": 100}).auto_paging_iter())
    by_number = {i.metadata["meterline_invoice"]: i for i in invoices}
    assert len(invoices) == len(ours) == len(by_number)
    items = list(client.v1.invoice_items.list({"limit": 100}).auto_paging_iter())
    assert len(items) == sum(1 for inv in ours.values() for a in inv["lines"].values() if a)
    for number, inv in ours.items():
        stripe_invoice = by_number[number]
        assert stripe_invoice.status == "open"
        assert stripe_invoice.total == inv["total"]
        assert stripe_invoice.currency == inv["currency"].lower()
        on_invoice = {
            int(line.metadata["meterline_line"]): line.amount for line in stripe_invoice.lines.data
        }
        assert on_invoice == {n: a for n, a in inv["lines"].items() if a}
    rows = sync_rows(billed.db)
    assert {n: (r[0], r[1]) for n, r in rows.items()} == {n: ("finalized", "open") for n in ours}
    assert all(r[3] == r[4] for r in rows.values())


def test_sync_sends_customers_items_and_invoices_that_match_ours(
    cli: CliFn, fake: FakeStripe, billed: Billed
) -> None:
    result = cli("sync")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "synced 3 invoice(s), flagged 0"
    assert_stripe_matches_ours(fake, billed)

    client = client_for(fake)
    acme = client.v1.customers.search({"query": "metadata['meterline_customer']:'acme'"}).data[0]
    assert (acme.name, acme.email) == ("Acme Corp", "billing@acme.test")
    by_number = {i.metadata["meterline_invoice"]: i for i in client.v1.invoices.list().data}
    send, charge = by_number["INV-000001"], by_number["INV-000002"]
    finalized_at = send.status_transitions.finalized_at
    assert (send.collection_method, send.due_date) == ("send_invoice", finalized_at + 14 * 86400)
    assert (charge.collection_method, charge.due_date) == ("charge_automatically", None)
    assert send.auto_advance is False
    descriptions = [line.description for line in send.lines.data]
    assert descriptions[1] == "Input tokens (1234567 × 0.0000025 USD)"
    # Every create carried the key derived from our ids.
    keys = sorted(r.idempotency_key for r in fake.log if r.method == "POST")
    assert "meterline-customer-acme" in keys
    assert "meterline-invoice-INV-000003" in keys
    assert "meterline-item-INV-000001-3" in keys
    assert "meterline-finalize-INV-000002" in keys
    assert "meterline-item-INV-000002-2" not in keys  # a zero line gets no item


def test_rerun_sends_nothing(cli: CliFn, fake: FakeStripe) -> None:
    assert cli("sync").exit_code == 0
    before = len(fake.log)
    result = cli("sync")
    assert result.exit_code == 0
    assert result.output == "nothing to sync: every finalized invoice is in Stripe\n"
    assert len(fake.log) == before


def test_a_month_with_usage_but_no_invoices_says_how_to_make_them(
    cli: CliFn, fake: FakeStripe, billed: Billed
) -> None:
    """November has usage but `invoice generate` never ran for it: "every finalized
    invoice is in Stripe" alone would read as if November were billed."""
    add_events(billed.db, Event(utc("2026-11-03T12:00:00"), consumer="agent-a", output=5))
    result = cli("sync", "--period", "2026-11")
    assert result.exit_code == 0
    assert result.stdout == "nothing to sync: every finalized invoice is in Stripe\n"
    assert result.stderr == (
        "Note: 2026-11 has no invoices yet; `billing invoice generate --period 2026-11` "
        "makes them.\n"
    )
    assert fake.log == []
    # a month whose invoices are all in Stripe gets no note
    assert cli("sync", "--period", "2026-10").exit_code == 0
    again = cli("sync", "--period", "2026-10")
    assert again.stderr == ""
    assert again.stdout == "nothing to sync: every finalized invoice is in Stripe\n"


def test_existing_stripe_customer_is_found_by_metadata_not_duplicated(
    cli: CliFn, fake: FakeStripe, billed: Billed
) -> None:
    client = client_for(fake)
    existing = client.v1.customers.create(
        {"name": "Acme (made by hand)", "metadata": {"meterline_customer": "acme"}}
    )
    assert cli("sync").exit_code == 0
    assert_stripe_matches_ours(fake, billed)
    acme_invoice = next(
        i for i in client.v1.invoices.list().data if i.metadata["meterline_invoice"] == "INV-000001"
    )
    assert acme_invoice.customer == existing.id


def test_filters_by_customer_and_period(cli: CliFn, fake: FakeStripe, billed: Billed) -> None:
    # --period means what it means to `billing invoice generate`: periods ending in it.
    for month in ("2026-09", "2026-11"):
        assert cli("sync", "--period", month).stdout == (
            "nothing to sync: every finalized invoice is in Stripe\n"
        )
    result = cli("sync", "--customer", "globex", "--period", "2026-10")
    assert result.exit_code == 0
    assert set(sync_rows(billed.db)) == {"INV-000002"}
    assert result.output.splitlines()[-1] == "synced 1 invoice(s), flagged 0"


def test_dry_run_prints_the_requests_and_sends_nothing(
    cli: CliFn, fake: FakeStripe, billed: Billed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STRIPE_API_KEY")  # a dry run needs no key: it sends nothing
    result = cli("sync", "--dry-run")
    assert result.exit_code == 0, result.output
    assert fake.log == []
    assert sync_rows(billed.db) == {}
    out = result.output
    assert "POST /v1/customers  Idempotency-Key: meterline-customer-acme" in out
    assert "POST /v1/invoiceitems  Idempotency-Key: meterline-item-INV-000001-2" in out
    assert '"amount": 309, "currency": "usd"' in out
    assert "meterline-item-INV-000002-2" not in out
    assert out.splitlines()[-1] == "dry run: 3 invoice(s), nothing sent"


# --------------------------------------------------------------------------- crashes


CRASH_POINTS = [
    # (fault, method, path regex, nth matching request)
    ("drop_after", "POST", r"^/v1/customers$", 1),
    ("drop_after", "POST", r"^/v1/invoices$", 2),
    ("drop_after", "POST", r"^/v1/invoiceitems$", 2),
    ("drop_after", "POST", r"/finalize$", 1),
    ("drop_before", "POST", r"^/v1/invoiceitems$", 3),
    ("error_before", "POST", r"^/v1/invoices$", 1),
    ("drop_after", "GET", r"^/v1/invoices/in_", 1),
]


@pytest.mark.parametrize(("kind", "method", "path", "nth"), CRASH_POINTS)
def test_sync_cut_off_mid_way_then_rerun_completes_without_duplicates(
    cli: CliFn, fake: FakeStripe, billed: Billed, kind: str, method: str, path: str, nth: int
) -> None:
    fault = fake.inject(kind, nth=nth, method=method, path=path)
    first = cli("sync")
    assert fault.fired.is_set()
    assert first.exit_code == 1
    assert first.output.splitlines()[-1].startswith("Error: ")
    second = cli("sync")
    assert second.exit_code == 0, second.output
    assert_stripe_matches_ours(fake, billed)
    assert all(r[6] is None for r in sync_rows(billed.db).values())  # errors cleared


@pytest.mark.parametrize(
    ("path", "nth"),
    [(r"^/v1/customers$", 2), (r"^/v1/invoices$", 1), (r"^/v1/invoiceitems$", 4)],
)
def test_lost_answer_after_the_idempotency_window_is_found_not_recreated(
    cli: CliFn, fake: FakeStripe, billed: Billed, path: str, nth: int
) -> None:
    """Stripe forgets keys after 24 hours; the rerun must look before it creates."""
    fake.inject("drop_after", nth=nth, method="POST", path=path)
    assert cli("sync").exit_code == 1
    fake.expire_idempotency_keys()
    assert cli("sync").exit_code == 0
    assert_stripe_matches_ours(fake, billed)
    assert not any(r.replayed for r in fake.log)


def test_lost_answer_is_retried_by_the_sdk_with_the_same_key(
    cli: CliFn, fake: FakeStripe, billed: Billed
) -> None:
    fake.inject("drop_after", nth=2, method="POST", path=r"^/v1/invoiceitems$")
    result = cli("sync", retries=2)
    assert result.exit_code == 0, result.output
    replayed = [r for r in fake.log if r.replayed]
    assert [r.idempotency_key for r in replayed] == ["meterline-item-INV-000001-2"]
    assert_stripe_matches_ours(fake, billed)


def test_sync_killed_with_sigkill_mid_request_resumes_without_duplicates(
    cli: CliFn, fake: FakeStripe, billed: Billed, tmp_path: Path
) -> None:
    fault = fake.inject("hang_after", nth=4, method="POST", path=r"^/v1/invoiceitems$")
    env = {
        **os.environ,
        "STRIPE_API_KEY": DEFAULT_API_KEY,
        "STRIPE_API_BASE": fake.url,
        "PYTHONPATH": str(REPO),
    }
    log = (tmp_path / "killed-sync.log").open("wb")
    proc = subprocess.Popen(
        [Path(sys.executable).with_name("billing"), "--db", str(billed.db),
         "--catalog", str(billed.catalog), "stripe", "sync"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert fault.done.wait(timeout=60), "the sync never reached the 4th invoice item"
        # The item now exists in Stripe; its answer never arrives: kill the client.
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        fake.release()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    assert len(fake.creates("/v1/invoiceitems")) == 4
    rows = sync_rows(billed.db)
    assert rows["INV-000001"][0] == "finalized"
    assert rows["INV-000002"][0] == "invoice"  # killed while its only item was in flight
    result = cli("sync")
    assert result.exit_code == 0, result.output
    assert_stripe_matches_ours(fake, billed)


# --------------------------------------------------------------------------- flags, errors


def test_totals_mismatch_flags_the_invoice_and_leaves_it_a_draft(
    cli: CliFn, fake: FakeStripe, billed: Billed
) -> None:
    # The first run dies after acme's draft exists; meanwhile someone adds an item to it.
    fake.inject("drop_before", nth=1, method="POST", path=r"^/v1/invoiceitems$")
    assert cli("sync").exit_code == 1
    client = client_for(fake)
    draft = client.v1.invoices.list().data[0]
    client.v1.invoice_items.create(
        {"customer": draft.customer, "invoice": draft.id, "amount": 1, "currency": "usd"}
    )
    result = cli("sync")
    assert result.exit_code == 1
    reason = f"Stripe total 55.43 USD != our total 55.42 USD on {draft.id}"
    lines = result.output.splitlines()
    assert f"INV-000001  acme  FLAGGED, not finalized: {reason}" in lines
    assert lines[-1] == (
        "Error: 1 invoice(s) flagged, not finalized: INV-000001; see `billing stripe status`"
    )
    assert client.v1.invoices.retrieve(draft.id).status == "draft"
    assert not [r for r in fake.log if r.path == f"/v1/invoices/{draft.id}/finalize"]
    rows = sync_rows(billed.db)
    assert rows["INV-000001"][0] == "flagged"
    assert rows["INV-000001"][3:6] == (5542, 5543, reason)
    assert {rows[n][0] for n in ("INV-000002", "INV-000003")} == {"finalized"}
    status = cli("status")
    assert f"INV-000001  acme  {draft.id}  draft  FLAGGED: {reason}" in status.output.splitlines()


def test_a_customer_already_billed_in_another_currency_gets_this_invoice(
    cli: CliFn, fake: FakeStripe, billed: Billed
) -> None:
    """Stripe invoices one customer in several currencies (each invoice takes only items
    in its own); the sync used to refuse the invoice with "currency mismatch"."""
    client = client_for(fake)
    euro = client.v1.customers.create(
        {"name": "Acme EU", "metadata": {"meterline_customer": "acme"}}
    )
    pending = client.v1.invoice_items.create(
        {"customer": euro.id, "amount": 100, "currency": "eur"}
    )
    result = cli("sync")
    assert result.exit_code == 0, result.output
    (usd,) = [i for i in client.v1.invoices.list({"customer": euro.id}).data]
    ours = our_invoices(billed.db)["INV-000001"]
    assert (usd.currency, usd.status, usd.total) == ("usd", "open", ours["total"])
    assert {int(line.metadata["meterline_line"]) for line in usd.lines.data} == {
        n for n, amount in ours["lines"].items() if amount
    }
    assert client.v1.invoice_items.retrieve(pending.id).invoice is None  # left pending
    assert client.v1.customers.retrieve(euro.id).currency == "eur"


def test_missing_api_key(cli: CliFn, fake: FakeStripe, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRIPE_API_KEY")
    result = cli("sync")
    assert result.exit_code == 1
    assert result.output == (
        "Error: STRIPE_API_KEY is not set: export your Stripe secret key "
        "(sk_test_... or sk_live_...) and run again\n"
    )
    assert fake.log == []


@pytest.mark.parametrize("command", ["sync", "status"])
def test_unknown_customer_is_one_line(cli: CliFn, fake: FakeStripe, command: str) -> None:
    result = cli(command, "--customer", "nosuch")
    assert result.exit_code == 1
    assert result.output == (
        "Error: unknown customer 'nosuch' (known customers: acme, globex, umbrella)\n"
    )
    assert fake.log == []


def test_a_consumer_named_as_customer_is_explained(cli: CliFn, fake: FakeStripe) -> None:
    result = cli("sync", "--customer", "agent-a", "--dry-run")
    assert result.exit_code == 1
    assert result.output == (
        "Error: unknown customer 'agent-a': 'agent-a' is a consumer, billed to customer "
        "'acme' (known customers: acme, globex, umbrella)\n"
    )


def test_stripe_error_shows_status_code_and_request_id(
    cli: CliFn, fake: FakeStripe, billed: Billed
) -> None:
    fake.inject("error_before", nth=1, method="POST", path=r"^/v1/invoices$")
    result = cli("sync")
    failed = next(r for r in fake.log if r.status == 500)
    reason = (
        "Stripe create invoice failed: HTTP 500 api_error: An unknown error "
        f"occurred (request {failed.request_id})"
    )
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == f"INV-000001  acme  FAILED: {reason}"
    assert lines[-1] == "Error: 1 invoice(s) failed: INV-000001; the reasons are above"
    assert sync_rows(billed.db)["INV-000001"][0] == "customer"
    assert sync_rows(billed.db)["INV-000001"][6] == f"INV-000001: {reason}"


def test_wrong_api_key_is_reported_with_stripes_message(
    cli: CliFn, fake: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_wrongkey1234")
    result = cli("sync")
    req = fake.log[0].request_id
    assert result.output == (
        "Error: INV-000001: Stripe search customers failed: HTTP 401 invalid_request_error: "
        f"Invalid API Key provided: sk_test_************1234 (request {req})\n"
    )


def test_unreachable_api_base(cli: CliFn, fake: FakeStripe) -> None:
    url = fake.url
    fake.stop()
    result = cli("sync")
    assert result.exit_code == 1
    assert result.output == (
        f"Error: INV-000001: Stripe search customers failed: no answer from {url} "
        "(connection error); run the sync again, it resumes where it stopped\n"
    )


def test_api_base_from_the_environment(
    cli: CliFn, fake: FakeStripe, billed: Billed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRIPE_API_BASE", fake.url)
    result = cli("sync", api_base=False)
    assert result.exit_code == 0, result.output
    assert_stripe_matches_ours(fake, billed)


def test_bad_options_are_refused(cli: CliFn) -> None:
    bad_period = cli("sync", "--period", "2026-13")
    assert bad_period.exit_code == 2
    assert "Invalid value for '--period': period '2026-13': expected a month" in bad_period.output
    bad_base = cli("sync", "--api-base", "localhost:1", api_base=False)
    assert bad_base.exit_code == 2
    assert "'localhost:1' is not a URL such as http://127.0.0.1:12111" in bad_base.output


def test_sdk_rejects_nothing_we_send(fake: FakeStripe, cli: CliFn) -> None:
    """Every parameter the sync sends is one the SDK's typed params define (else 400)."""
    assert cli("sync").exit_code == 0
    assert [r for r in fake.log if r.status == 400] == []


def test_linked_customer_deleted_in_stripe_is_reported_and_the_others_still_go(
    cli: CliFn, fake: FakeStripe, billed: Billed
) -> None:
    """One invoice failing (here: its Stripe customer deleted) used to stop the run, so
    no later customer was ever billed; now it gets one line, the others go, exit 1."""
    fake.inject("drop_before", nth=1, method="POST", path=r"^/v1/invoices$")
    assert cli("sync", "--customer", "acme").exit_code == 1
    client = client_for(fake)
    acme = client.v1.customers.list().data[0]
    client.v1.customers.delete(acme.id)
    result = cli("sync")
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == (
        f"INV-000001  acme  FAILED: customer 'acme': its Stripe customer {acme.id} was deleted "
        "in Stripe; delete its row from stripe_customers to link or create another"
    )
    assert lines[-2:] == [
        "synced 2 invoice(s), flagged 0, failed 1",
        "Error: 1 invoice(s) failed: INV-000001; the reasons are above",
    ]
    rows = sync_rows(billed.db)
    assert {n: rows[n][0] for n in ("INV-000002", "INV-000003")} == {
        "INV-000002": "finalized",
        "INV-000003": "finalized",
    }


def test_a_write_waiting_for_the_store_lock_says_so_once_then_goes_on(
    fake: FakeStripe, billed: Billed
) -> None:
    """Each write of the sync opens the store; one that found it locked by another
    process waited up to 30 s in silence. Now it says so on stderr (after ~2 s), once,
    and goes on waiting until the lock is free."""
    hold = fake.inject("hold_before", nth=1, method="POST", path=r"^/v1/invoiceitems$")
    env = {
        **os.environ,
        "STRIPE_API_KEY": DEFAULT_API_KEY,
        "STRIPE_API_BASE": fake.url,
        "PYTHONPATH": str(REPO),
    }
    sync = subprocess.Popen(
        [Path(sys.executable).with_name("billing"), "--db", str(billed.db),
         "--catalog", str(billed.catalog), "stripe", "sync", "--max-network-retries", "0"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    holder = None
    try:
        assert hold.done.wait(timeout=60), "the sync never sent its first invoice item"
        # While that item is in flight, another process takes the store's lock.
        holder = subprocess.Popen(
            [sys.executable, "-c",
             "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
             "sys.stdin.readline()",
             str(billed.db)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        fake.release()  # the item is made; the sync's write of its id now waits
        assert sync.stderr is not None
        assert sync.stderr.readline() == "waiting for the store lock held by another process…\n"
        holder.communicate("\n", timeout=10)
        out, err = sync.communicate(timeout=60)
    finally:
        for proc in (sync, holder):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert sync.returncode == 0, out + err
    assert err == ""  # said once
    assert_stripe_matches_ours(fake, billed)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", True), ("12", True), ("²", False), ("٣", False), ("", False), (None, False)],
)
def test_an_items_line_number_is_ascii_digits(value: object, expected: bool) -> None:
    """``str.isdigit`` takes ``²`` (edited into an item's metadata in Stripe), which
    ``int`` refuses: the sync would have stopped with a traceback."""
    from billing.stripe.sync import is_line_number

    assert is_line_number(value) is expected
