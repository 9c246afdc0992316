"""Invoices from real DuckDB files: periods, proration, plan changes, late events, numbering.

Expected amounts are computed by hand from tests/billing/events.py's CATALOG (prices per
1,000 tokens): the arithmetic is in the comments next to each figure.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.credits import grant_credits
from billing.invoices import (
    BillingError,
    Generated,
    explain_line,
    generate_invoices,
    get_invoice,
    list_invoices,
    preview_invoice,
)
from billing.model import Invoice
from billing.render import invoice_json, scalar
from billing.store import billing_store
from tests.billing.events import CATALOG, Event, Setup, add_events, setup, sql, utc, write


def generate(s: Setup, month: str, now: str, customer: str | None = None) -> Generated:
    with billing_store(s.db) as con:
        return generate_invoices(con, s.catalog, month, customer=customer, now=utc(now))


def amounts(inv: Invoice) -> dict[str, Decimal]:
    return {f"{ln.kind}:{ln.rate_card_key}:{ln.usage_start:%m-%d}": ln.amount for ln in inv.lines}


def alpha_january() -> list[Event]:
    return [
        Event(utc("2026-01-05"), input=1000, cached_input=500, output=4000),
        Event(utc("2026-01-20"), model="GPT-4o-mini", input=2000, output=8000),
        # outside: before the subscription, at the period's (exclusive) end, unpriced model
        Event(utc("2025-12-31T23:59:59"), input=100_000),
        Event(utc("2026-02-01"), output=1000),
        Event(utc("2026-01-07"), provider="anthropic", model="claude-sonnet-4", input=9999),
        # someone else's usage
        Event(utc("2026-01-06"), consumer="agent-b", input=7000),
        Event(utc("2026-01-06"), consumer=None, input=7000),
    ]


def test_one_invoice_per_customer_period_with_hand_computed_lines(tmp_path: Path) -> None:
    s = setup(tmp_path)
    add_events(s.db, *alpha_january())
    result = generate(s, "2026-01", "2026-02-01T00:00:05Z")

    assert [i.number for i in result.invoices] == ["INV-000001"]
    inv = result.invoices[0]
    assert (inv.customer_key, inv.period_start, inv.period_end) == (
        "alpha",
        utc("2026-01-01"),
        utc("2026-02-01"),
    )
    assert amounts(inv) == {
        "flat:fee:01-01": Decimal("30.00"),  # first period: its in-advance fee is billed here
        "usage:gpt-in:01-01": Decimal("7.00"),  # (1000 + 500 + 2000) * 2.00 / 1000
        "usage:gpt-out:01-01": Decimal("110.00"),  # 10000 * 10/1000 + 2000 * 5/1000
        "flat:fee:02-01": Decimal("30.00"),  # February's fee, in advance at its start
    }
    assert inv.total == Decimal("177.00")
    out = inv.line(3)
    assert out.quantity == 12000  # 4000 + 8000: model glob is case-insensitive
    assert [t["quantity"] for t in out.detail["pricing"]["tiers"]] == ["10000", "2000"]
    assert out.detail["rate_card"]["price"]["tiers"][0]["unit_amount"] == "10.00"
    assert inv.watermark == inv.issued_at == utc("2026-02-01T00:00:05Z")
    (stored_total,) = sql(s.db, "SELECT total FROM invoices WHERE number = 'INV-000001'")[0]
    assert stored_total == Decimal("177.00")


def test_generate_is_idempotent_and_a_finalized_invoice_never_changes(tmp_path: Path) -> None:
    s = setup(tmp_path)
    add_events(s.db, *alpha_january())
    first = generate(s, "2026-01", "2026-02-01T00:00:05Z")
    before = json.dumps(invoice_json(first.invoices[0]), default=str, sort_keys=True)
    counts = sql(
        s.db,
        "SELECT (SELECT count(*) FROM invoices), (SELECT count(*) FROM invoice_lines),"
        " (SELECT count(*) FROM invoice_windows)",
    )
    # more January usage arrives, then the same month is generated again
    add_events(s.db, Event(utc("2026-01-30"), output=1000, ingested_at=utc("2026-02-03")))
    again = generate(s, "2026-01", "2026-02-05T00:00:00Z")

    assert again.created == []
    assert [i.number for i in again.invoices] == ["INV-000001"]
    assert (
        sql(
            s.db,
            "SELECT (SELECT count(*) FROM invoices), (SELECT count(*) FROM invoice_lines),"
            " (SELECT count(*) FROM invoice_windows)",
        )
        == counts
    )
    with billing_store(s.db) as con:
        stored = get_invoice(con, "INV-000001", s.catalog)
    assert json.dumps(invoice_json(stored), default=str, sort_keys=True) == before


def test_numbers_are_sequential_in_period_end_order(tmp_path: Path) -> None:
    s = setup(tmp_path)
    generate(s, "2026-01", "2026-03-02T00:00:00Z")
    feb = generate(s, "2026-02", "2026-03-02T00:00:00Z")
    # beta [01-10, 02-10) and [02-10, 02-15), gamma [01-31, 02-28), alpha [02-01, 03-01)
    assert [(i.number, i.customer_key, f"{i.period_end:%m-%d}") for i in feb.invoices] == [
        ("INV-000002", "beta", "02-10"),
        ("INV-000003", "beta", "02-15"),
        ("INV-000004", "gamma", "02-28"),
        ("INV-000005", "alpha", "03-01"),
    ]
    with billing_store(s.db) as con:
        assert [i.number for i in list_invoices(con)] == [f"INV-00000{n}" for n in range(1, 6)]


def test_plan_change_mid_period_prorates_and_starts_new_periods(tmp_path: Path) -> None:
    s = setup(tmp_path)
    add_events(
        s.db,
        Event(utc("2026-01-09T23:59:59"), consumer="agent-b", input=50_000),  # before start
        Event(utc("2026-01-10"), consumer="agent-b", input=1000),
        Event(utc("2026-02-12"), consumer="agent-b", output=1000),
        Event(
            utc("2026-02-16"),
            consumer="agent-b",
            provider="anthropic",
            model="claude-x",
            input=2000,
            output=1500,
        ),  # fmt: skip
    )
    feb = generate(s, "2026-02", "2026-03-01T00:00:00Z", customer="beta")
    first, cut = feb.invoices
    assert amounts(first) == {
        "flat:fee:01-10": Decimal("30.00"),
        "usage:gpt-in:01-10": Decimal("2.00"),  # 1000 * 2/1000
        "usage:gpt-out:01-10": Decimal("0.00"),
        # the next period is cut by the plan change: [02-10, 02-15) of [02-10, 03-10)
        "flat:fee:02-10": Decimal("5.36"),  # 30 * 5 days / 28 days = 5.357142...
    }
    assert (cut.period_start, cut.period_end) == (utc("2026-02-10"), utc("2026-02-15"))
    # no fee: February's (cut) fee was billed in advance on the previous invoice, and
    # the new plan bills its fee in arrears
    assert amounts(cut) == {
        "usage:gpt-in:02-10": Decimal("0.00"),
        "usage:gpt-out:02-10": Decimal("10.00"),  # 1000 * 10/1000
    }
    march = generate(s, "2026-03", "2026-04-01T00:00:00Z", customer="beta")
    plus = march.invoices[0]
    assert (plus.period_start, plus.period_end) == (utc("2026-02-15"), utc("2026-03-15"))
    assert amounts(plus) == {
        "flat:fee:02-15".replace("fee", "support"): Decimal("31.00"),
        "usage:claude-all:02-15": Decimal("10.00"),  # (2000 + 1500 - 1000 included) * 4/1000
    }


def test_month_end_anchor_and_prorated_last_period(tmp_path: Path) -> None:
    s = setup(tmp_path)
    now = "2026-07-01T00:00:00Z"
    periods = []
    for month in ("2026-01", "2026-02", "2026-03", "2026-04", "2026-05", "2026-06"):
        invoices = generate(s, month, now, "gamma").invoices
        periods.append([(f"{i.period_start:%m-%d}", f"{i.period_end:%m-%d}") for i in invoices])
    # anchored on Jan 31: Feb 28, Mar 31, Apr 30, May 31; the subscription ends Jun 1, so
    # the last period is the single day May 31, whose last instant is in May
    assert periods == [
        [],
        [("01-31", "02-28")],
        [("02-28", "03-31")],
        [("03-31", "04-30")],
        [("04-30", "05-31"), ("05-31", "06-01")],
        [],
    ]
    with billing_store(s.db) as con:
        last = list_invoices(con, customer="gamma")[-1]
        last = get_invoice(con, last.number or "")
    # support in arrears for 1 day of [05-31, 06-30): 31.00 / 30 = 1.0333...
    assert amounts(last) == {
        "flat:support:05-31": Decimal("1.03"),
        "usage:claude-all:05-31": Decimal("0.00"),
    }


def test_only_closed_periods_are_generated(tmp_path: Path) -> None:
    s = setup(tmp_path)
    result = generate(s, "2026-02", "2026-02-20T00:00:00Z")
    assert [(i.customer_key, f"{i.period_end:%m-%d}") for i in result.invoices] == [
        ("beta", "02-10"),
        ("beta", "02-15"),
    ]
    assert [(p.customer.key, f"{p.end:%m-%d}") for p in result.pending] == [
        ("gamma", "02-28"),
        ("alpha", "03-01"),
    ]
    with pytest.raises(BillingError, match=r"^2026-03 has not started yet$"):
        generate(s, "2026-03", "2026-02-20T00:00:00Z")


def test_unknown_customer_and_bad_month(tmp_path: Path) -> None:
    s = setup(tmp_path)
    with pytest.raises(
        BillingError, match=r"^unknown customer 'zeta' \(known customers: alpha, beta, gamma\)$"
    ):
        generate(s, "2026-01", "2026-02-02T00:00:00Z", customer="zeta")
    with pytest.raises(BillingError, match=r"expected a month as YYYY-MM"):
        generate(s, "2026-13", "2026-02-02T00:00:00Z")


def test_late_events_go_on_the_next_invoice_priced_incrementally(tmp_path: Path) -> None:
    s = setup(tmp_path)
    add_events(s.db, *alpha_january())
    jan = generate(s, "2026-01", "2026-02-01T00:00:05Z").invoices[0]
    late = Event(utc("2026-01-25"), output=3000, ingested_at=utc("2026-02-02"))
    add_events(s.db, late, Event(utc("2026-02-10"), input=1000, output=500))
    feb = generate(s, "2026-02", "2026-03-01T00:00:05Z", customer="alpha").invoices[0]

    assert amounts(feb) == {
        "usage:gpt-in:02-01": Decimal("2.00"),  # 1000 * 2/1000
        "usage:gpt-out:02-01": Decimal("15.00"),  # (1000 at 02-01T00:00 + 500) * 10/1000
        "flat:fee:03-01": Decimal("30.00"),
        # January's output went from 12000 to 15000 tokens: price(15000) - price(12000)
        # = (100.00 + 5000 * 5/1000) - 110.00 = 15.00, all in the second tier
        "late_usage:gpt-out:01-01": Decimal("15.00"),
    }
    late_line = feb.lines[-1]
    assert late_line.description == "GPT output — late usage for 2026-01-01 – 2026-02-01"
    assert late_line.quantity == 3000
    assert late_line.detail["late"]["billed_quantity"] == "12000"
    assert late_line.detail["late"]["total_amount"] == "125.00"
    assert late_line.detail["late"]["billed_amount"] == "110.00"  # the currency's decimals
    with billing_store(s.db) as con:
        ex = explain_line(con, feb.number or "", late_line.line_no)
    assert [e["event_id"] for e in ex.events] == [late.event_id]

    # Over all invoices January costs what one invoice with every event would have cost.
    whole = setup(tmp_path / "whole")
    add_events(whole.db, *alpha_january(), Event(utc("2026-01-25"), output=3000))
    one = generate(whole, "2026-01", "2026-02-01T00:00:05Z").invoices[0]
    billed_jan = [
        ln.amount
        for i in (jan, feb)
        for ln in i.lines
        if ln.usage_start == utc("2026-01-01") and ln.kind != "flat"
    ]
    assert sum(billed_jan) == sum(ln.amount for ln in one.lines if ln.kind == "usage")


def test_no_event_is_billed_twice_or_dropped(tmp_path: Path) -> None:
    s = setup(tmp_path)
    january = alpha_january()
    add_events(s.db, *january)
    generate(s, "2026-01", "2026-02-01T00:00:05Z")
    # late for January, twice (after each invoice), and current usage in Feb and March
    wave1 = [
        Event(utc("2026-01-28"), input=10, ingested_at=utc("2026-02-10")),
        Event(utc("2026-02-03"), output=20),
        Event(utc("2026-02-27"), input=30, ingested_at=utc("2026-03-01T00:00:04Z")),
    ]
    add_events(s.db, *wave1)
    generate(s, "2026-02", "2026-03-01T00:00:05Z", customer="alpha")
    wave2 = [
        Event(utc("2026-01-29"), input=40, ingested_at=utc("2026-03-05")),
        Event(utc("2026-02-28"), output=50, ingested_at=utc("2026-03-06")),
        Event(utc("2026-03-15"), input=60),
    ]
    add_events(s.db, *wave2)
    generate(s, "2026-03", "2026-04-01T00:00:05Z", customer="alpha")

    # every (rate card, event, tokens) billed, over all invoices of the customer
    billed: list[tuple[str, str, object]] = []
    with billing_store(s.db) as con:
        for inv in list_invoices(con, customer="alpha"):
            for ln in get_invoice(con, inv.number or "").lines:
                if ln.kind == "flat":
                    continue
                events = explain_line(con, inv.number or "", ln.line_no).events
                billed += [(ln.rate_card_key, str(e["event_id"]), e["quantity"]) for e in events]
    billable = [*january[:2], january[3], *wave1, *wave2]  # [3]: ts 02-01T00:00
    expected = [("gpt-in", e.event_id, e.input + e.cached_input) for e in billable]
    expected += [("gpt-out", e.event_id, e.output) for e in billable]
    assert sorted(b for b in billed if b[2]) == sorted(x for x in expected if x[2])


def test_events_ingested_after_the_watermark_wait_for_the_next_invoice(tmp_path: Path) -> None:
    s = setup(tmp_path)
    # ts in January but ingested after the moment of generation (a proxy batch in flight)
    in_flight = Event(
        utc("2026-01-31T23:59:59"), input=1000, ingested_at=utc("2026-02-01T00:00:06Z")
    )
    add_events(s.db, in_flight)
    jan = generate(s, "2026-01", "2026-02-01T00:00:05Z").invoices[0]
    assert amounts(jan)["usage:gpt-in:01-01"] == Decimal("0.00")
    feb = generate(s, "2026-02", "2026-03-01T00:00:05Z", customer="alpha").invoices[0]
    assert amounts(feb)["late_usage:gpt-in:01-01"] == Decimal("2.00")


def test_preview_shows_usage_so_far_and_stores_nothing(tmp_path: Path) -> None:
    s = setup(tmp_path)
    add_events(s.db, *alpha_january())
    with billing_store(s.db) as con:
        inv = preview_invoice(con, s.catalog, "alpha", at=utc("2026-01-10"), now=utc("2026-03-01"))
    assert inv.number is None and inv.status == "preview"
    assert amounts(inv)["usage:gpt-in:01-01"] == Decimal("3.00")  # only e1 before 01-10
    assert amounts(inv)["usage:gpt-out:01-01"] == Decimal("40.00")  # 4000 * 10/1000
    assert sql(s.db, "SELECT count(*) FROM invoices") == [(0,)]
    with billing_store(s.db) as con, pytest.raises(BillingError) as err:
        preview_invoice(con, s.catalog, "beta", at=utc("2026-01-05"))
    assert str(err.value) == "customer 'beta' has no subscription at 2026-01-05T00:00:00Z"


def test_explain_recomputes_the_line_and_detects_a_changed_store(tmp_path: Path) -> None:
    s = setup(tmp_path)
    events = alpha_january()
    add_events(s.db, *events)
    jan = generate(s, "2026-01", "2026-02-01T00:00:05Z").invoices[0]
    with billing_store(s.db) as con:
        ex = explain_line(con, "INV-000001", 3)
        assert ex.quantity == jan.line(3).quantity == 12000
        assert [(e["event_id"], e["response_id"], e["request_id"]) for e in ex.events] == [
            (e.event_id, f"resp-{e.event_id}", f"req-{e.event_id}") for e in events[:2]
        ]
        with pytest.raises(BillingError) as err:
            explain_line(con, "INV-000001", 1)
        assert str(err.value) == "INV-000001 line 1 is a flat fee: no usage events behind it"
        with pytest.raises(BillingError) as err:
            explain_line(con, "INV-000001", 9)
        assert str(err.value) == "INV-000001 has no line 9 (it has 4 lines)"
        with pytest.raises(BillingError) as err:
            explain_line(con, "INV-000404", 1)
        assert str(err.value) == "no invoice 'INV-000404'"
    sql(s.db, "DELETE FROM usage_events WHERE event_id = ?", [events[0].event_id])
    with billing_store(s.db) as con, pytest.raises(BillingError) as err:
        explain_line(con, "INV-000001", 3)
    assert str(err.value) == "INV-000001 line 3: events add up to 8000, the line bills 12000"


def test_changed_subscriptions_that_overlap_an_invoice_are_refused(tmp_path: Path) -> None:
    s = setup(tmp_path)
    generate(s, "2026-01", "2026-02-01T00:00:05Z", customer="alpha")
    moved = CATALOG.replace('start: "2026-01-01T00:00:00Z"', 'start: "2026-01-15T00:00:00Z"')
    write(s.catalog_path, moved)
    with pytest.raises(BillingError) as err:
        generate(s, "2026-02", "2026-03-01T00:00:05Z", customer="alpha")
    assert str(err.value) == (
        "customer 'alpha': period 2026-01-15T00:00:00Z .. 2026-02-15T00:00:00Z overlaps "
        "INV-000001 (2026-01-01T00:00:00Z .. 2026-02-01T00:00:00Z); "
        "were the subscriptions changed after invoicing?"
    )


W1, W2, W3 = utc("2026-02-01T00:00:05"), utc("2026-03-01T00:00:05"), utc("2026-04-01T00:00:05")


def billed_per_period(s: Setup) -> dict[tuple[str, str], tuple[Decimal, Decimal]]:
    """(period start, rate card) -> (quantity, amount) over every usage/late line."""
    out: dict[tuple[str, str], tuple[Decimal, Decimal]] = {}
    with billing_store(s.db) as con:
        for summary in list_invoices(con, customer="alpha"):
            for ln in get_invoice(con, summary.number or "").lines:
                if ln.kind == "flat":
                    continue
                key = (f"{ln.usage_start:%m-%d}", ln.rate_card_key)
                q, a = out.get(key, (Decimal(0), Decimal(0)))
                out[key] = (q + ln.quantity, a + ln.amount)
    return out


@settings(max_examples=12, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=59 * 86400 - 1),  # ts: seconds into Jan + Feb
            st.sampled_from([None, W1, W2]),  # arrives on time, after Jan's or Feb's invoice
            st.integers(min_value=0, max_value=6000),
            st.integers(min_value=0, max_value=6000),
        ),
        min_size=1,
        max_size=10,
    )
)
def test_late_arrivals_add_up_to_what_one_invoice_per_period_charges(
    spec: list[tuple[int, datetime | None, int, int]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        late, on_time = setup(Path(tmp) / "late"), setup(Path(tmp) / "on-time")
        for n, (offset, after, inp, out) in enumerate(spec):
            ts = utc("2026-01-01") + timedelta(seconds=offset)
            arrives = max(ts, after) + timedelta(hours=1) if after else ts + timedelta(seconds=1)
            event = Event(ts, input=inp, output=out, ingested_at=arrives, event_id=f"e{n}")
            add_events(late.db, event)
            add_events(on_time.db, Event(ts, input=inp, output=out, event_id=f"e{n}"))
        for month, now in (("2026-01", W1), ("2026-02", W2), ("2026-03", W3)):
            generate(late, month, now.isoformat(), customer="alpha")
            generate(on_time, month, now.isoformat(), customer="alpha")
        assert billed_per_period(late) == billed_per_period(on_time)


WEEKLY = CATALOG.replace(
    "customers:\n",
    """  - key: weekly
    name: Weekly
    currency: USD
    billing_cadence: P1W
    rate_cards:
      - key: gpt-in
        name: GPT input
        feature: gpt-in
        price: {type: unit, amount: "1.00", per: 1000}
customers:
  - key: delta
    name: Delta
    currency: USD
    consumers: [stray]
    subscriptions:
      - {plan: weekly, start: "2026-03-02T00:00:00Z"}
""",
)


def test_weekly_periods_give_several_invoices_a_month_and_sweep_late_usage_once(
    tmp_path: Path,
) -> None:
    s = setup(tmp_path, WEEKLY)
    add_events(
        s.db,
        Event(utc("2026-03-03"), consumer="stray", input=1000),
        Event(utc("2026-03-10"), consumer="stray", input=2000),
        Event(utc("2026-03-29"), consumer="stray", input=4000),
    )
    march = generate(s, "2026-03", "2026-04-01T00:00:00Z", customer="delta")
    assert [(f"{i.period_start:%m-%d}", i.total) for i in march.invoices] == [
        ("03-02", Decimal("1.00")),
        ("03-09", Decimal("2.00")),
        ("03-16", Decimal("0.00")),
        ("03-23", Decimal("4.00")),  # [03-23, 03-30) ends in March
    ]
    # two late events for early March; April has four weeks ending in it
    add_events(
        s.db,
        Event(utc("2026-03-04"), consumer="stray", input=8000, ingested_at=utc("2026-04-02")),
        Event(utc("2026-03-11"), consumer="stray", input=16000, ingested_at=utc("2026-04-02")),
    )
    april = generate(s, "2026-04", "2026-05-01T00:00:00Z", customer="delta")
    late = [
        (i.number, ln.description, ln.amount)
        for i in april.invoices
        for ln in i.lines
        if ln.kind == "late_usage"
    ]
    assert late == [
        ("INV-000005", "GPT input — late usage for 2026-03-02 – 2026-03-09", Decimal("8.00")),
        ("INV-000005", "GPT input — late usage for 2026-03-09 – 2026-03-16", Decimal("16.00")),
    ]
    assert [f"{i.period_start:%m-%d}" for i in april.invoices] == [
        "03-30",
        "04-06",
        "04-13",
        "04-20",
    ]


def test_late_usage_under_volume_pricing_can_be_a_credit(tmp_path: Path) -> None:
    """Volume tiers price all units at the tier the total reaches: late usage that lifts the
    total into a cheaper tier lowers the period's charge, so the late line is negative."""
    s = setup(tmp_path, CATALOG.replace("mode: graduated", "mode: volume"))
    add_events(s.db, Event(utc("2026-01-10"), output=9000))
    jan = generate(s, "2026-01", W1.isoformat(), customer="alpha").invoices[0]
    assert amounts(jan)["usage:gpt-out:01-01"] == Decimal("90.00")  # 9000 * 10/1000
    add_events(s.db, Event(utc("2026-01-11"), output=2000, ingested_at=utc("2026-02-03")))
    feb = generate(s, "2026-02", W2.isoformat(), customer="alpha").invoices[0]
    # 11000 tokens, all at 5/1000 = 55.00; 90.00 already billed
    assert amounts(feb)["late_usage:gpt-out:01-01"] == Decimal("-35.00")


def test_a_negative_total_is_carried_to_the_next_invoices_and_no_money_is_lost(
    tmp_path: Path,
) -> None:
    """A late credit larger than what its invoice charges leaves a negative total: it goes
    to the customer's credit balance (that invoice is then zero, as Stripe does) and later
    invoices take it after prepaid grants, until it is used up (it was dropped before)."""
    s = setup(tmp_path, CATALOG.replace("mode: graduated", "mode: volume"))
    add_events(s.db, Event(utc("2026-01-10"), output=10_000))
    generate(s, "2026-01", W1.isoformat(), customer="alpha")  # 10000 at 10/1000 = 100.00
    add_events(s.db, Event(utc("2026-01-11"), output=1, ingested_at=utc("2026-02-03")))
    feb = generate(s, "2026-02", W2.isoformat(), customer="alpha").invoices[0]
    # 10001 at 5/1000 = 50.005 -> 50.01: a late credit of -49.99 against March's 30.00 fee
    assert amounts(feb)["late_usage:gpt-out:01-01"] == Decimal("-49.99")
    carried = feb.lines[-1]
    assert (carried.kind, carried.rate_card_key, carried.amount) == (
        "credit",
        "credit-balance",
        Decimal("19.99"),
    )
    assert feb.total == 0
    with billing_store(s.db) as con:  # pays 25.00 of March's 30.00 fee: grants go first
        grant_credits(con, s.catalog, "alpha", Decimal("25.00"), granted_by="t", reason="r", now=W2)
    mar = generate(s, "2026-03", W3.isoformat(), customer="alpha").invoices[0]
    assert [(ln.rate_card_key, ln.amount) for ln in mar.lines if ln.kind == "credit"] == [
        ("prepaid-credit", Decimal("-25.00")),
        ("credit-balance", Decimal("-5.00")),
    ]
    assert mar.total == 0
    apr = generate(s, "2026-04", "2026-05-01T00:00:05Z", customer="alpha").invoices[0]
    assert apr.lines[-1].detail == {"credit_balance": {"before": "14.99", "after": "0.00"}}
    assert apr.total == Decimal("15.01")  # May's fee 30.00 - the 14.99 left
    with billing_store(s.db) as con:
        stored = list_invoices(con)
        lines = sql(s.db, "SELECT rate_card_key, amount FROM invoice_lines")
    charged = sum(Decimal(a) for key, a in lines if key != "credit-balance")
    assert sum(Decimal(a) for key, a in lines if key == "credit-balance") == 0
    assert (
        sum(inv.total for inv in stored) == charged
    )  # 160.00 - 19.99 + (30.00 - 25.00 granted) + 30.00


def test_preview_shows_late_usage_the_next_invoice_will_bill(tmp_path: Path) -> None:
    s = setup(tmp_path)
    add_events(s.db, *alpha_january())
    generate(s, "2026-01", W1.isoformat())
    add_events(s.db, Event(utc("2026-01-25"), input=500, ingested_at=utc("2026-02-02")))
    with billing_store(s.db) as con:
        inv = preview_invoice(con, s.catalog, "alpha", at=utc("2026-02-10"), now=utc("2026-02-10"))
    assert amounts(inv)["late_usage:gpt-in:01-01"] == Decimal("1.00")  # 500 * 2/1000
    assert sql(s.db, "SELECT count(*) FROM invoices") == [(1,)]


def preview_lines(inv: Invoice) -> list[tuple[str, str, str, Decimal, Decimal]]:
    """What a preview and a stored invoice must agree on, line by line."""
    return [(ln.kind, ln.rate_card_key, ln.description, ln.quantity, ln.amount) for ln in inv.lines]


def test_preview_of_an_invoiced_period_bills_the_fees_its_invoice_billed(tmp_path: Path) -> None:
    """The period's own invoice had billed its fees, which the preview took for fees an
    earlier invoice billed: the preview of January lacked January's and February's."""
    s = setup(tmp_path)
    add_events(s.db, *alpha_january())
    [jan] = generate(s, "2026-01", W1.isoformat(), customer="alpha").invoices
    with billing_store(s.db) as con:
        at = utc("2026-01-31T23:59:59")
        shown = preview_invoice(con, s.catalog, "alpha", at=at, now=W1)
    assert preview_lines(shown) == preview_lines(jan)
    assert shown.total == jan.total == Decimal("177.00")


WEEKLY_FEE = WEEKLY.replace(
    "billing_cadence: P1W\n    rate_cards:\n",
    "billing_cadence: P1W\n    rate_cards:\n"
    "      - key: fee\n        name: Weekly fee\n"
    '        price: {type: flat, amount: "10.00", payment_term: in_advance}\n',
)


def test_preview_of_a_period_whose_predecessor_is_not_invoiced_is_what_generate_stores(
    tmp_path: Path,
) -> None:
    """``generate`` builds the closed weeks of a month in one run, the first carrying the
    second's in-advance fee and taking credit first; the preview of the second week built
    it alone and billed that fee (and the credit) twice."""
    s = setup(tmp_path, WEEKLY_FEE)
    add_events(
        s.db,
        Event(utc("2026-03-03"), consumer="stray", input=1000),
        Event(utc("2026-03-10"), consumer="stray", input=2000),
    )
    at = utc("2026-03-15T23:59:59")
    with billing_store(s.db) as con:
        grant_credits(con, s.catalog, "delta", Decimal("25.00"), granted_by="t", reason="r", now=at)
        shown = preview_invoice(con, s.catalog, "delta", at=at, now=at)
    month = generate(s, "2026-03", "2026-04-01T00:00:00Z", customer="delta")
    [week2] = [i for i in month.invoices if i.period_start == utc("2026-03-09")]

    assert preview_lines(shown) == preview_lines(week2)
    assert shown.total == week2.total == Decimal("8.00")  # 2.00 + 10.00 - the 4.00 left
    assert [(ln.rate_card_key, ln.amount) for ln in week2.lines if ln.kind != "usage"] == [
        ("fee", Decimal("10.00")),  # the fee of [03-16, 03-23): its own was on week 1's
        ("prepaid-credit", Decimal("-4.00")),  # 25.00 less week 1's 10.00 + 10.00 + 1.00
    ]


def test_preview_builds_the_uninvoiced_weeks_of_a_month_not_generated_yet(
    tmp_path: Path,
) -> None:
    """The week [03-30, 04-06) ends in April; March's weeks are closed but March is not
    generated yet. The preview built only the April weeks before it, so this week's own
    in-advance fee (which March's last week bills) was billed again beside the next one."""
    s = setup(tmp_path, WEEKLY_FEE)
    at = utc("2026-04-02T12:00:00")
    with billing_store(s.db) as con:
        shown = preview_invoice(con, s.catalog, "delta", at=at, now=at)
    generate(s, "2026-03", "2026-04-01T00:00:00Z", customer="delta")
    april = generate(s, "2026-04", "2026-05-01T00:00:00Z", customer="delta")
    [stored] = [i for i in april.invoices if i.period_start == utc("2026-03-30")]
    assert preview_lines(shown) == preview_lines(stored)
    assert shown.total == stored.total == Decimal("10.00")  # the fee of [04-06, 04-13) only


def test_preview_of_a_far_future_period_builds_only_the_period_before_it(
    tmp_path: Path,
) -> None:
    """Every uninvoiced period up to a preview's instant was built first: the year 9998
    took a minute and a gigabyte (about a hundred thousand months). The periods not closed
    yet are left out but the one before, whose invoice bills this period's fee."""
    s = setup(tmp_path)
    add_events(s.db, *alpha_january())
    generate(s, "2026-01", W1.isoformat(), customer="alpha")
    at = utc("9998-06-15")
    started = time.monotonic()
    with billing_store(s.db) as con:
        far = preview_invoice(con, s.catalog, "alpha", at=at, now=W1)
    assert time.monotonic() - started < 15  # a minute before; well under a second now
    fees = [(ln.description, ln.amount) for ln in far.lines if ln.kind == "flat"]
    assert fees == [("Platform fee (9998-07-01 – 9998-08-01)", Decimal("30.00"))]


def test_preview_of_the_invoice_that_carried_a_balance_does_not_take_it_back(
    tmp_path: Path,
) -> None:
    """The balance an invoiced period is built again with is what the invoices before it
    carried: the preview of the invoice that carried 19.99 took those 19.99 itself, and
    that of an invoice before one that used the balance saw it used up."""
    s = setup(tmp_path, CATALOG.replace("mode: graduated", "mode: volume"))
    add_events(s.db, Event(utc("2026-01-10"), output=10_000))
    generate(s, "2026-01", W1.isoformat(), customer="alpha")
    add_events(s.db, Event(utc("2026-01-11"), output=1, ingested_at=utc("2026-02-03")))
    generate(s, "2026-02", W2.isoformat(), customer="alpha")  # carries 19.99
    mar = generate(s, "2026-03", W3.isoformat(), customer="alpha").invoices[0]
    assert mar.total == Decimal("10.01")  # April's fee less the 19.99
    with billing_store(s.db) as con:
        feb = preview_invoice(con, s.catalog, "alpha", at=utc("2026-02-15"), now=W3)
        again = preview_invoice(con, s.catalog, "alpha", at=utc("2026-03-15"), now=W3)
    assert [ln.rate_card_key for ln in feb.lines if ln.kind == "credit"] == []
    assert feb.total == Decimal("30.00")  # its late credit was swept already (documented)
    assert preview_lines(again) == preview_lines(mar)


def test_settle_leaves_the_freshest_batches_to_the_next_invoice(tmp_path: Path) -> None:
    """With several writers (DuckLake) a batch stamped just before the watermark may commit
    just after it; ``settle`` moves the watermark back so such a batch is billed later,
    never lost."""
    s = setup(tmp_path)
    fresh = Event(utc("2026-01-31T23:00:00"), output=1000, ingested_at=utc("2026-02-01T00:07:00"))
    add_events(s.db, *alpha_january(), fresh)
    with billing_store(s.db) as con:
        jan = generate_invoices(
            con,
            s.catalog,
            "2026-01",
            customer="alpha",
            now=utc("2026-02-01T00:10:00"),
            settle=timedelta(minutes=5),
        ).invoices[0]
    assert jan.watermark == utc("2026-02-01T00:05:00")
    assert amounts(jan)["usage:gpt-out:01-01"] == Decimal("110.00")  # 12000 tokens, not 13000
    feb = generate(s, "2026-02", "2026-03-01T00:00:05Z", customer="alpha").invoices[0]
    late = [ln for ln in feb.lines if ln.kind == "late_usage"]
    assert [(ln.rate_card_key, ln.quantity) for ln in late] == [("gpt-out", 1000)]


def test_a_period_that_ended_less_than_settle_ago_waits(tmp_path: Path) -> None:
    """Invoiced too soon, a period's last events (in flight, ingested after the
    watermark) would go to the next invoice; a subscription that ended has none, so they
    would be on no invoice. The period waits until the watermark (now - settle) is
    ``settle`` past its end."""
    s = setup(tmp_path)
    last = Event(utc("2026-01-31T23:59:00"), output=1000, ingested_at=utc("2026-02-01T00:01:00"))
    add_events(s.db, *alpha_january(), last)
    with billing_store(s.db) as con:
        early = generate_invoices(
            con, s.catalog, "2026-01", customer="alpha",
            now=utc("2026-02-01T00:02:00"), settle=timedelta(minutes=5),
        )  # fmt: skip
        assert early.invoices == [] and early.created == []
        assert [p.customer.key for p in early.pending] == ["alpha"]
        assert early.settled_after == utc("2026-02-01T00:10:00")
        jan = generate_invoices(
            con, s.catalog, "2026-01", customer="alpha",
            now=utc("2026-02-01T00:10:00"), settle=timedelta(minutes=5),
        ).invoices[0]  # fmt: skip
    assert amounts(jan)["usage:gpt-out:01-01"] == Decimal("115.00")  # 13000 tokens (12000: 110.00)


def test_a_rerun_with_a_larger_settle_returns_the_stored_invoice_not_a_pending_period(
    tmp_path: Path,
) -> None:
    """A month generated again returns its stored invoices, whatever ``settle``: before,
    a rerun whose ``now - 2 * settle`` fell before an invoiced period's end called that
    period "not closed yet" (pending, "run again after ...") and left its invoice out."""
    s = setup(tmp_path)
    add_events(s.db, *alpha_january())
    now = utc("2026-02-01T00:10:00")
    with billing_store(s.db) as con:
        first = generate_invoices(con, s.catalog, "2026-01", customer="alpha", now=now)
        again = generate_invoices(
            con, s.catalog, "2026-01", customer="alpha", now=now, settle=timedelta(days=366)
        )
    assert first.created == ["INV-000001"]
    assert [i.number for i in again.invoices] == ["INV-000001"] and again.created == []
    assert again.pending == [] and again.settled_after is None


def test_a_run_that_stored_meanwhile_is_not_invoiced_again(tmp_path: Path) -> None:
    """Two ``invoice generate`` at once on a lake: the second built its drafts before the
    first stored the same period. It must not store a second invoice for it (on a lake no
    constraint stopped that: both were stored, the customer's total doubled). Here the
    other run stores in the middle of this one's build (its progress hook)."""
    s = setup(tmp_path)
    add_events(s.db, *alpha_january())
    now = utc("2026-02-01T00:00:05")
    with billing_store(s.db) as con:
        other = con.cursor()
        ran: list[str] = []

        def progress(items: list[Any]) -> Iterable[Any]:
            if not ran:  # the other run, once: it stores first
                done = generate_invoices(other, s.catalog, "2026-01", customer="alpha", now=now)
                ran.extend(done.created)
            return items

        mine = generate_invoices(
            con, s.catalog, "2026-01", customer="alpha", now=now, progress=progress
        )
        stored = con.execute("SELECT number, customer_key FROM invoices").fetchall()
    assert ran == ["INV-000001"] and mine.created == []
    assert [i.number for i in mine.invoices] == ["INV-000001"]
    assert stored == [("INV-000001", "alpha")]


def test_a_sweep_reads_only_windows_with_late_events_and_records_every_window(
    tmp_path: Path,
) -> None:
    """March's invoice sweeps January and February; only February has a late event. Both
    windows are recorded as swept, only February is billed, and a January event ingested
    after March's sweep still goes on April's invoice."""
    s = setup(tmp_path)
    add_events(s.db, *alpha_january())
    generate(s, "2026-01", "2026-02-01T00:00:05Z", customer="alpha")
    add_events(s.db, Event(utc("2026-02-10"), output=1000))
    generate(s, "2026-02", "2026-03-01T00:00:05Z", customer="alpha")
    late_feb = Event(utc("2026-02-20"), output=2000, ingested_at=utc("2026-03-02"))
    add_events(s.db, late_feb, Event(utc("2026-03-03"), input=1000))
    march = generate(s, "2026-03", "2026-04-01T00:00:05Z", customer="alpha").invoices[0]

    late = [ln for ln in march.lines if ln.kind == "late_usage"]
    assert [(ln.usage_start, ln.rate_card_key, ln.quantity) for ln in late] == [
        (utc("2026-02-01"), "gpt-out", 2000)
    ]
    with billing_store(s.db) as con:
        swept = con.execute(
            "SELECT usage_start, kind FROM invoice_windows WHERE invoice_number = ? "
            "ORDER BY usage_start",
            [march.number],
        ).fetchall()
    assert [(start.month, kind) for start, kind in swept] == [
        (1, "late"),
        (2, "late"),
        (3, "period"),
    ]

    late_jan = Event(utc("2026-01-28"), output=500, ingested_at=utc("2026-04-02"))
    add_events(s.db, late_jan)
    april = generate(s, "2026-04", "2026-05-01T00:00:05Z", customer="alpha").invoices[0]
    late = [ln for ln in april.lines if ln.kind == "late_usage"]
    assert [(ln.usage_start, ln.quantity) for ln in late] == [(utc("2026-01-01"), 500)]


def test_one_run_gives_each_customer_only_its_own_grants(tmp_path: Path) -> None:
    """Grants are read once for the whole run: each invoice still takes only its customer's."""
    s = setup(tmp_path)
    add_events(s.db, Event(utc("2026-03-05"), input=1000, output=4000))
    granted = {}
    with billing_store(s.db) as con:
        for key, amount in (("alpha", "5.00"), ("gamma", "7.00")):
            g = grant_credits(
                con, s.catalog, key, Decimal(amount), granted_by="test", reason=key,
                now=utc("2026-02-01"),
            )  # fmt: skip
            granted[g.grant_id] = key
    result = generate(s, "2026-03", "2026-04-01T00:00:05Z")
    credits = {
        inv.customer_key: [
            (t["grant_id"], Decimal(t["amount"]))
            for ln in inv.lines
            if ln.kind == "credit"
            for t in ln.detail["grants"]
        ]
        for inv in result.invoices
    }
    assert {ck for ck, taken in credits.items() if taken} == {"alpha", "gamma"}
    for ck, taken in credits.items():
        assert all(granted[gid] == ck for gid, _ in taken)
    assert credits["alpha"] == [(g, Decimal("5.00")) for g, k in granted.items() if k == "alpha"]
    assert credits["gamma"] == [(g, Decimal("7.00")) for g, k in granted.items() if k == "gamma"]


FEES_CATALOG = """
version: 1
consumers:
  - name: agent-a
plans:
  - key: basic
    name: Basic
    currency: USD
    billing_cadence: P1M
    rate_cards:
      - {key: fee, name: Basic fee, price: {type: flat, amount: "30.00", payment_term: in_advance}}
  - key: pro
    name: Pro
    currency: USD
    billing_cadence: P1M
    rate_cards:
      - {key: fee, name: Pro fee, price: {type: flat, amount: "199.00", payment_term: in_advance}}
customers:
  - key: acme
    name: Acme
    currency: USD
    consumers: [agent-a]
    subscriptions:
SUBSCRIPTIONS
"""


def fees_setup(tmp_path: Path, *subscriptions: str) -> Setup:
    return setup(tmp_path, fees_catalog(*subscriptions))


def fees_catalog(*subscriptions: str) -> str:
    return FEES_CATALOG.replace("SUBSCRIPTIONS", "\n".join(f"      - {s}" for s in subscriptions))


def test_an_invoice_without_lines_shows_its_total_in_the_currency_s_decimals(
    tmp_path: Path,
) -> None:
    """September's fee was billed in advance in August and nothing follows: no lines."""
    s = fees_setup(
        tmp_path, '{plan: basic, start: "2026-08-01T00:00:00Z", end: "2026-10-01T00:00:00Z"}'
    )
    generate(s, "2026-08", "2026-09-01T00:00:05Z")
    sep = generate(s, "2026-09", "2026-10-01T00:00:05Z").invoices[0]
    assert sep.lines == []
    assert scalar(invoice_json(sep)["total"]) == "0.00"
    with billing_store(s.db) as con:
        assert scalar(invoice_json(get_invoice(con, sep.number or ""))["total"]) == "0.00"


def test_a_plan_added_after_the_old_one_was_invoiced_bills_its_first_fee(tmp_path: Path) -> None:
    """Basic ends Oct 1 and its last invoice (September) is stored without a next fee;
    Pro from Oct 1 is added to the catalog afterwards: Pro's first invoice carries October's
    fee itself (the invoice that would have carried it is final), never losing it."""
    basic = '{plan: basic, start: "2026-08-01T00:00:00Z", end: "2026-10-01T00:00:00Z"}'
    s = fees_setup(tmp_path, basic)
    generate(s, "2026-08", "2026-09-01T00:00:05Z")
    assert amounts(generate(s, "2026-09", "2026-10-01T00:00:05Z").invoices[0]) == {}
    write(s.catalog_path, fees_catalog(basic, '{plan: pro, start: "2026-10-01T00:00:00Z"}'))
    octo = generate(s, "2026-10", "2026-11-01T00:00:05Z").invoices[0]
    assert amounts(octo) == {
        "flat:fee:10-01": Decimal("199.00"),
        "flat:fee:11-01": Decimal("199.00"),
    }
    nov = generate(s, "2026-11", "2026-12-01T00:00:05Z").invoices[0]
    assert amounts(nov) == {"flat:fee:12-01": Decimal("199.00")}  # November's is on October's


def test_a_fee_billed_in_advance_is_never_billed_again_for_a_moved_period(tmp_path: Path) -> None:
    """September's invoice billed Pro's fee for [Oct 1, Nov 1); the upgrade is then moved
    to Oct 10: billing Pro's [Oct 10, Nov 10) would charge October twice, so generate
    refuses, naming the customer, plan, periods and invoice, and stores nothing."""
    s = fees_setup(
        tmp_path,
        '{plan: basic, start: "2026-08-01T00:00:00Z", end: "2026-10-01T00:00:00Z"}',
        '{plan: pro, start: "2026-10-01T00:00:00Z"}',
    )
    generate(s, "2026-08", "2026-09-01T00:00:05Z")
    sep = generate(s, "2026-09", "2026-10-01T00:00:05Z").invoices[0]
    assert amounts(sep) == {"flat:fee:10-01": Decimal("199.00")}
    write(
        s.catalog_path,
        fees_catalog(
            '{plan: basic, start: "2026-08-01T00:00:00Z", end: "2026-10-10T00:00:00Z"}',
            '{plan: pro, start: "2026-10-10T00:00:00Z"}',
        ),
    )
    with pytest.raises(BillingError) as err:
        generate(s, "2026-10", "2026-11-01T00:00:05Z")
    assert str(err.value) == (
        "customer 'acme': the in-advance fee 'fee' of plan 'pro' for 2026-10-10T00:00:00Z .. "
        "2026-11-10T00:00:00Z overlaps the one INV-000002 billed for 2026-10-01T00:00:00Z .. "
        "2026-11-01T00:00:00Z; were the subscriptions changed after invoicing?"
    )
    assert sql(s.db, "SELECT count(*) FROM invoices") == [(2,)]


def test_a_cancellation_after_the_fee_was_billed_in_advance_bills_nothing_again(
    tmp_path: Path,
) -> None:
    """Pro's October fee is on September's invoice; Pro then ends Oct 15 (no refund)."""
    s = fees_setup(tmp_path, '{plan: pro, start: "2026-09-01T00:00:00Z"}')
    generate(s, "2026-09", "2026-10-01T00:00:05Z")
    write(
        s.catalog_path,
        fees_catalog('{plan: pro, start: "2026-09-01T00:00:00Z", end: "2026-10-15T00:00:00Z"}'),
    )
    octo = generate(s, "2026-10", "2026-11-01T00:00:05Z").invoices[0]
    assert (octo.period_start, octo.period_end) == (utc("2026-10-01"), utc("2026-10-15"))
    assert amounts(octo) == {}


def test_the_unit_price_shown_is_the_exact_price_billed(tmp_path: Path) -> None:
    """0.123456789012 per 1000 is 0.000123456789012 per token: more than the store's 12
    decimals, shown exactly on the invoice and in the Stripe item text."""
    from billing.stripe.describe import describe_line
    from billing.stripe.syncstate import SyncState

    s = setup(
        tmp_path,
        CATALOG.replace('amount: "2.00", per: 1000', 'amount: "0.123456789012", per: 1000'),
    )
    add_events(s.db, Event(utc("2026-01-05"), input=1_000_000))
    made = generate(s, "2026-01", "2026-02-01T00:00:05Z", customer="alpha").invoices[0]
    exact = Decimal("0.000123456789012")
    with billing_store(s.db) as con:
        shown = get_invoice(con, made.number or "")
    for inv in (made, shown):
        line = inv.lines[1]
        assert (line.rate_card_key, line.amount) == ("gpt-in", Decimal("123.46"))
        assert line.unit_price == exact and str(line.unit_price) == "0.000123456789012"
        assert invoice_json(inv)["lines"][1]["unit_price"] == exact
    ours = SyncState(s.db).unsynced()[0]
    assert describe_line(ours.lines[1], "USD") == "GPT input (1000000 × 0.000123456789012 USD)"
