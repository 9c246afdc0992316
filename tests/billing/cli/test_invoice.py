"""``billing invoice preview|generate|list|show|explain`` through the real CLI."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from billing.cli import main as billing_cli
from billing.store import billing_store
from tests.billing.cli.runner import error, run
from tests.billing.events import Event, Setup, add_events, setup, sql, utc

UNKNOWN_ZETA = "Error: unknown customer 'zeta' (known customers: alpha, beta, gamma)"


@pytest.fixture
def s(tmp_path: Path) -> Setup:
    s = setup(tmp_path)
    add_events(
        s.db,
        Event(utc("2026-01-05"), input=1000, cached_input=500, output=4000, event_id="ev-a"),
        Event(utc("2026-01-20"), model="GPT-4o-mini", input=2000, output=8000, event_id="ev-b"),
    )
    return s


def generated(s: Setup) -> Setup:
    result = run(s, "invoice", "generate", "--period", "2026-01")
    assert result.exit_code == 0, result.output
    return s


def test_generate_table_then_idempotent_rerun(s: Setup) -> None:
    first = run(s, "invoice", "generate", "--period", "2026-01")
    assert first.exit_code == 0
    lines = first.stdout.splitlines()
    assert lines[2].split() == [
        "INV-000001",
        "alpha",
        "2026-01-01T00:00:00Z",
        "2026-02-01T00:00:00Z",
        "USD",
        "177.00",
        "yes",
    ]
    assert lines[-1] == "1 created, 0 already existed."
    again = run(s, "invoice", "generate", "--period", "2026-01")
    assert again.stdout.splitlines()[2].split()[-1] == "no"
    assert again.stdout.splitlines()[-1] == "0 created, 1 already existed."
    assert sql(s.db, "SELECT count(*) FROM invoices") == [(1,)]


def test_generate_json_shape(s: Setup) -> None:
    data = json.loads(
        run(s, "invoice", "generate", "--period", "2026-02", "--format", "json").stdout
    )
    assert data["period"] == "2026-02"
    assert data["created"] == ["INV-000001", "INV-000002", "INV-000003", "INV-000004"]
    assert data["pending"] == []
    first = data["invoices"][0]
    assert {k: first[k] for k in ("number", "customer", "currency", "total", "status")} == {
        "number": "INV-000001",
        "customer": "beta",
        "currency": "USD",
        "total": "35.36",  # 30.00 for 01-10..02-10 + 30.00 * 5/28 for 02-10..02-15
        "status": "finalized",
    }
    assert [ln["amount"] for ln in first["lines"]] == ["30.00", "0.00", "0.00", "5.36"]
    assert all(isinstance(ln["quantity"], str) for ln in first["lines"])


def test_generate_csv_for_one_customer(s: Setup) -> None:
    out = run(
        s, "invoice", "generate", "--period", "2026-02", "--customer", "gamma", "--format", "csv"
    )
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [(r["number"], r["customer"], r["total"], r["created"]) for r in rows] == [
        ("INV-000001", "gamma", "31.00", "yes")
    ]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--period", "2026-13"], 2, "Error: Invalid value for '--period': "
         "period '2026-13': expected a month as YYYY-MM, e.g. 2026-03"),
        (["--period", "2099-01"], 1, "Error: 2099-01 has not started yet"),
        (["--period", "2026-01", "--customer", "zeta"], 1, UNKNOWN_ZETA),
        ([], 2, "Error: Missing option '--period'."),
    ],
)  # fmt: skip
def test_generate_errors(s: Setup, args: list[str], code: int, message: str) -> None:
    result = run(s, "invoice", "generate", *args)
    assert (result.exit_code, result.stderr.splitlines()[-1], result.stdout) == (code, message, "")


def test_list_shows_stripe_status_once_synced(s: Setup) -> None:
    generated(s)
    table = run(s, "invoice", "list")
    assert table.stdout.splitlines()[0].split() == [
        "NUMBER",
        "CUSTOMER",
        "PERIOD_START",
        "PERIOD_END",
        "CURRENCY",
        "TOTAL",
        "STATUS",
        "ISSUED_AT",
        "STRIPE_STATUS",
    ]
    assert (
        json.loads(run(s, "invoice", "list", "--format", "json").stdout)[0]["stripe_status"] is None
    )
    sql(
        s.db,
        "INSERT INTO stripe_invoices (invoice_number, customer_key, stripe_invoice_id, state,"
        " stripe_status, started_at, updated_at) VALUES"
        " ('INV-000001', 'alpha', 'in_1', 'finalized', 'open', now(), now())",
    )
    rows = list(csv.DictReader(io.StringIO(run(s, "invoice", "list", "--format", "csv").stdout)))
    assert [(r["number"], r["total"], r["stripe_status"]) for r in rows] == [
        ("INV-000001", "177.00", "open")
    ]
    assert table.exit_code == 0
    assert run(s, "invoice", "list", "--customer", "beta").stdout == "(none)\n"


def test_list_of_an_unknown_customer_is_an_error(s: Setup) -> None:
    result = run(s, "invoice", "list", "--customer", "zeta")
    assert (result.exit_code, result.output) == (1, UNKNOWN_ZETA + "\n")


def test_show_text_lists_tiers(s: Setup) -> None:
    out = run(generated(s), "invoice", "show", "INV-000001").stdout
    assert "Invoice  INV-000001" in out
    assert "Customer Alpha Ltd (alpha)" in out
    assert "      tier 1: 10000 units at 10.00 per 1000 = 100.00" in out
    assert "      tier 2: 2000 units at 5.00 per 1000 = 10.00" in out
    assert out.rstrip().endswith("Total    177.00 USD")


def test_show_json_and_csv(s: Setup) -> None:
    generated(s)
    data = json.loads(run(s, "invoice", "show", "INV-000001", "--format", "json").stdout)
    assert data["total"] == "177.00"
    assert [
        (ln["kind"], ln["quantity"], ln["unit_price"], ln["amount"]) for ln in data["lines"]
    ] == [
        ("flat", "1", "30.00", "30.00"),
        ("usage", "3500", "0.002", "7.00"),
        ("usage", "12000", None, "110.00"),
        ("flat", "1", "30.00", "30.00"),
    ]
    tiers = data["lines"][2]["detail"]["pricing"]["tiers"]
    assert [(t["quantity"], t["amount"]) for t in tiers] == [("10000", "100.00"), ("2000", "10.00")]
    rows = list(
        csv.DictReader(
            io.StringIO(run(s, "invoice", "show", "INV-000001", "--format", "csv").stdout)
        )
    )
    assert sum(Decimal(r["amount"]) for r in rows) == Decimal("177.00")


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        assert not any(k in ("src", "href") for k, _ in attrs), "self-contained: no assets"

    def handle_data(self, data: str) -> None:
        self.text.append(data.strip())


def test_show_html_is_a_self_contained_page(s: Setup) -> None:
    page = run(generated(s), "invoice", "show", "INV-000001", "--format", "html").stdout
    parser = _Parser()
    parser.feed(page)
    assert "style" in parser.tags and "script" not in parser.tags and "link" not in parser.tags
    assert "Invoice INV-000001" in parser.text
    assert "177.00 USD" in parser.text
    assert any(t.startswith("Tier 2: above 10,000 tokens") for t in parser.text)


def test_show_errors(s: Setup) -> None:
    result = run(s, "invoice", "show", "INV-000009")
    assert (result.exit_code, result.stderr) == (1, "Error: no invoice 'INV-000009'\n")
    result = run(s, "invoice", "show", "INV-000009", "--format", "pdf")
    assert (result.exit_code, result.stderr) == (1, "Error: no invoice 'INV-000009'\n")
    result = run(s, "invoice", "show", "INV-000009", "--format", "xml")
    assert result.exit_code == 2


def test_explain_table_json_csv(s: Setup) -> None:
    generated(s)
    table = run(s, "invoice", "explain", "INV-000001", "3")
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0] == "INV-000001 line 3: GPT output"
    assert lines[1] == "feature gpt-out: provider openai, model GPT-4O*, token types output"
    assert lines[-1] == "2 events, quantity 12000 = line quantity 12000"
    data = json.loads(run(s, "invoice", "explain", "INV-000001", "2", "--format", "json").stdout)
    assert data["quantity"] == "3500" and data["line"]["quantity"] == "3500"  # decimal strings
    assert [
        (e["event_id"], e["response_id"], e["request_id"], e["quantity"]) for e in data["events"]
    ] == [
        ("ev-a", "resp-ev-a", "req-ev-a", "1500"),
        ("ev-b", "resp-ev-b", "req-ev-b", "2000"),
    ]
    assert data["events"][0]["input_tokens"] == 1000  # raw token counts stay JSON integers
    assert data["windows"][0]["start"] == "2026-01-01T00:00:00Z"
    rows = list(
        csv.DictReader(
            io.StringIO(run(s, "invoice", "explain", "INV-000001", "3", "--format", "csv").stdout)
        )
    )
    assert [(r["event_id"], r["output_tokens"], r["quantity"]) for r in rows] == [
        ("ev-a", "4000", "4000"),
        ("ev-b", "8000", "8000"),
    ]


def test_explain_lists_only_events_with_tokens_the_line_counts(s: Setup) -> None:
    """An input-only call matches the output line's model but adds nothing to it: it is
    neither behind that line (explain) nor counted in its ``detail.events``."""
    add_events(s.db, Event(utc("2026-01-07"), input=700, event_id="ev-c"))
    generated(s)
    out = json.loads(run(s, "invoice", "explain", "INV-000001", "3", "--format", "json").stdout)
    assert [e["event_id"] for e in out["events"]] == ["ev-a", "ev-b"]
    inp = json.loads(run(s, "invoice", "explain", "INV-000001", "2", "--format", "json").stdout)
    assert [e["event_id"] for e in inp["events"]] == ["ev-a", "ev-c", "ev-b"]
    shown = json.loads(run(s, "invoice", "show", "INV-000001", "--format", "json").stdout)
    assert [ln["detail"].get("events") for ln in shown["lines"]] == [None, 3, 2, None]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["INV-000001", "1"], 1,
         "Error: INV-000001 line 1 is a flat fee: no usage events behind it"),
        (["INV-000001", "7"], 1, "Error: INV-000001 has no line 7 (it has 4 lines)"),
        (["INV-000404", "1"], 1, "Error: no invoice 'INV-000404'"),
        (["INV-000001", "0"], 2, "Error: Invalid value for 'LINE': 0 is not in the range x>=1."),
        (["INV-000001"], 2, "Error: Missing argument 'LINE'."),
    ],
)  # fmt: skip
def test_explain_errors(s: Setup, args: list[str], code: int, message: str) -> None:
    result = run(generated(s), "invoice", "explain", *args)
    assert (result.exit_code, result.stderr.splitlines()[-1]) == (code, message)


def test_explain_when_the_events_changed(s: Setup) -> None:
    generated(s)
    sql(s.db, "UPDATE usage_events SET output_tokens = 1 WHERE event_id = 'ev-b'")
    result = run(s, "invoice", "explain", "INV-000001", "3")
    assert (result.exit_code, result.stderr) == (
        1,
        "Error: INV-000001 line 3: events add up to 4001, the line bills 12000\n",
    )


def test_preview(s: Setup) -> None:
    result = run(
        s, "invoice", "preview", "--customer", "alpha", "--at", "2026-01-10", "--format", "json"
    )
    data = json.loads(result.stdout)
    assert (data["number"], data["status"], data["period_start"]) == (
        None,
        "preview",
        "2026-01-01T00:00:00Z",
    )
    assert [ln["amount"] for ln in data["lines"]] == ["30.00", "3.00", "40.00", "30.00"]
    assert data["total"] == "103.00"
    assert sql(s.db, "SELECT count(*) FROM invoices") == [(0,)]
    text = run(
        s, "invoice", "preview", "--customer", "alpha", "--at", "2026-01-10T12:00:00Z"
    ).stdout
    assert text.startswith("Invoice  PREVIEW (not finalized)\n")
    page = run(
        s, "invoice", "preview", "--customer", "alpha", "--at", "2026-01-10", "--format", "html"
    )
    assert "<title>Invoice Preview</title>" in page.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--customer", "zeta"], 1, UNKNOWN_ZETA),
        (["--customer", "beta", "--at", "2026-01-01"], 1,
         "Error: customer 'beta' has no subscription at 2026-01-01T00:00:00Z"),
        (["--customer", "beta", "--at", "soon"], 2,
         "Error: Invalid value for '--at': 'soon' is not a date or time such as "
         "2026-03-01 or 2026-03-01T12:00:00Z"),
        ([], 2, "Error: Missing option '--customer'."),
    ],
)  # fmt: skip
def test_preview_errors(s: Setup, args: list[str], code: int, message: str) -> None:
    result = run(s, "invoice", "preview", *args)
    assert (result.exit_code, result.stderr.splitlines()[-1]) == (code, message)


def test_generate_reports_periods_not_closed_yet(s: Setup) -> None:
    month = f"{datetime.now(UTC):%Y-%m}"  # alpha's period ending on the 1st of next month
    result = run(s, "invoice", "generate", "--period", month, "--customer", "alpha")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1] == (
        f"0 created, 0 already existed. 1 period(s) ending in {month} have not closed yet."
    )
    data = json.loads(
        run(
            s, "invoice", "generate", "--period", month, "--customer", "alpha", "--format", "json"
        ).stdout
    )
    assert [p["customer"] for p in data["pending"]] == ["alpha"]


def test_generate_refuses_periods_overlapping_an_invoice(s: Setup) -> None:
    generated(s)
    s.catalog_path.write_text(
        s.catalog_path.read_text().replace(
            'start: "2026-01-01T00:00:00Z"', 'start: "2026-01-15T00:00:00Z"'
        )
    )
    result = run(s, "invoice", "generate", "--period", "2026-02", "--customer", "alpha")
    assert (result.exit_code, result.stderr) == (
        1,
        "Error: customer 'alpha': period 2026-01-15T00:00:00Z .. 2026-02-15T00:00:00Z overlaps "
        "INV-000001 (2026-01-01T00:00:00Z .. 2026-02-01T00:00:00Z); "
        "were the subscriptions changed after invoicing?\n",
    )


def test_list_on_a_missing_database(s: Setup, tmp_path: Path) -> None:
    missing = tmp_path / "nope.duckdb"
    result = run(Setup(missing, s.catalog_path), "invoice", "list")
    assert (result.exit_code, result.stderr) == (
        1,
        f"Error: {missing}: no such database (nothing metered yet?)\n",
    )


def test_generate_on_a_store_without_events_refuses_unless_allowed(tmp_path: Path) -> None:
    empty = setup(tmp_path)
    refused = run(empty, "invoice", "generate", "--period", "2026-01")
    assert refused.exit_code == 1
    assert refused.stderr == (
        "Error: the store holds no usage events: the 1 invoice(s) for 2026-01 would bill no "
        "usage and could never be changed; pass --allow-empty to generate them anyway\n"
    )
    assert sql(empty.db, "SELECT count(*) FROM invoices") == [(0,)]
    allowed = run(empty, "invoice", "generate", "--period", "2026-01", "--allow-empty")
    assert allowed.exit_code == 0
    assert allowed.stdout.splitlines()[-1] == "1 created, 0 already existed."


def test_generate_names_the_earlier_months_never_generated(s: Setup) -> None:
    result = run(s, "invoice", "generate", "--period", "2026-03")
    assert result.exit_code == 0
    assert result.stderr == (
        "Note: earlier months with closed periods never invoiced: 2026-01 (alpha); "
        "2026-02 (beta, gamma, alpha). Run `billing invoice generate --period 2026-01` "
        "(and the others).\n"
    )
    generated(s)
    run(s, "invoice", "generate", "--period", "2026-02")
    assert run(s, "invoice", "generate", "--period", "2026-03").stderr == ""


def test_an_output_path_that_cannot_be_written_is_one_line(s: Setup, tmp_path: Path) -> None:
    """``-o`` into a directory that does not exist: one line (was a traceback)."""
    target = tmp_path / "no-such-dir" / "inv.txt"
    result = run(generated(s), "invoice", "show", "INV-000001", "-o", str(target))
    assert result.exit_code == 1, result.output
    assert error(result) == f"Error: -o {target}: cannot write: No such file or directory"


@pytest.mark.parametrize(
    "args,message",
    [
        (("alerts", "deliver", "--watch", "nan"), "Invalid value for '--watch': not a number"),
        (("alerts", "deliver", "--min-backoff", "inf"), "Invalid value for '--min-backoff'"),
        (("invoice", "generate", "--period", "2026-01", "--settle", "9" * 20), "'--settle'"),
        (("credits", "grant", "--customer", "alpha", "--amount", "1", "--priority", "2147483648"),
         "Invalid value for '--priority'"),
    ],
    ids=["watch-nan", "backoff-inf", "settle-huge", "priority-int32"],
)  # fmt: skip
def test_numbers_past_what_can_be_used_are_refused(
    s: Setup, args: tuple[str, ...], message: str
) -> None:
    """Each was accepted and then overflowed into a traceback (``time.sleep(inf)``,
    a ``timedelta`` of 10^20 seconds, an INT32 column)."""
    result = run(s, *args)
    assert result.exit_code == 2 and message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["usage", "--from", "0001-01-01T00:00:00+01:00"],
            "'0001-01-01T00:00:00+01:00' is out of range (years 1970 to 9998, in UTC)",
        ),
        (["timeline", "--to", "0001-01-01"], "'0001-01-01' is out of range"),
        (["health", "--from", "1970-01-01T00:30:00+01:00"], "out of range (years 1970"),
        (["invoice", "preview", "--at", "9999-12-31"], "'9999-12-31' is out of range"),
        (["statement", "--customer", "acme", "--period", "２０２６-１１"], "expected a month"),
        (["invoice", "generate", "--period", "2026-11\n"], "expected a month"),
        (
            ["invoice", "generate", "--period", "0001-01"],
            "period '0001-01' is out of range (years 1970 to 9998, in UTC)",
        ),
    ],
    ids=[
        "year-1-with-offset",
        "year-1",
        "1969-in-utc",
        "year-9999",
        "full-width-digits",
        "trailing-newline",
        "month-in-year-1",
    ],
)
def test_times_out_of_range_and_odd_digits_are_one_line(
    tmp_path: Path, args: list[str], line: str
) -> None:
    """Before: OverflowError tracebacks for years 1 and 9999; a month in full-width
    digits or with a trailing newline was taken (then a traceback, or an invoice run),
    and so was ``0001-01`` (an invoice dated ``1-01-01`` was finalized)."""
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text((Path(__file__).parents[3] / "catalog.yaml").read_text())
    result = CliRunner().invoke(
        billing_cli, ["--db", str(tmp_path / "m.duckdb"), "--catalog", str(catalog), *args]
    )
    assert result.exit_code == 2, result.output
    assert line in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m.duckdb").exists()


def test_an_empty_store_variable_is_an_error_not_the_default_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``METERLINE_DB=`` was read as unset: a grant went to ./meterline.duckdb, which
    the proxy (it refuses an empty store) never reads."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("METERLINE_DB", "")
    result = CliRunner().invoke(
        billing_cli, ["credits", "grant", "--customer", "a", "--amount", "1"]
    )
    assert result.exit_code == 2
    assert "METERLINE_DB is set but empty: unset it, or name the file" in result.output
    assert not (tmp_path / "meterline.duckdb").exists()


def test_a_command_waiting_for_a_locked_store_says_so(tmp_path: Path) -> None:
    """Another process holds the file: the command sat silent for up to 30 s. It says it
    waits (after 2 s), then goes on once the lock is released.

    The holder lets go only once the command has said it waits, so the test does not
    depend on how fast the command starts."""
    db = tmp_path / "m.duckdb"
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text((Path(__file__).parents[3] / "catalog.yaml").read_text())
    with billing_store(db, create=True):  # a Meterline store (a read refuses any other)
        pass
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
         "c.execute('CREATE TABLE t (a INT)'); print('held', flush=True); sys.stdin.readline()",
         str(db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdin is not None and holder.stdout is not None
    assert holder.stdout.readline() == "held\n"
    command = subprocess.Popen(
        [str(Path(sys.executable).parent / "billing"), "--db", str(db),
         "--catalog", str(catalog), "usage", "--format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert command.stderr is not None
        first = command.stderr.readline()  # blocks until the command says it waits
    finally:
        holder.stdin.write("release\n")
        holder.stdin.close()
        holder.wait(10)
        holder.stdout.close()
    out, rest = command.communicate(timeout=60)
    assert command.returncode == 0, first + rest
    assert first.startswith(f"waiting for the store: {db}: waiting up to 30 s: ")
