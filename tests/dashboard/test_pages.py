"""The dashboard over HTTP: every page's JSON twin equals the CLI's JSON for the same query,
figures checked against the seed's formula, errors, read-only access, the token rule."""

from __future__ import annotations

import json
import math
import socket
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from billing.store import billing_store
from billing.usage import is_unpriced
from tests.billing.cli.runner import error, run
from tests.billing.events import Setup, write_catalog
from tests.dashboard.conftest import Server, load, start_dashboard, stop
from tests.dashboard.seed import CATALOG, EVENTS_SQL

JAN = "from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z"
DAY1 = "from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z"


def cli_json(s: Setup, *args: str) -> Any:
    result = run(s, *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --------------------------------------------------------------------------- usage


JAN_ARGS = ["--from", "2026-01-01", "--to", "2026-02-01"]


@pytest.mark.parametrize(
    ("query", "args"),
    [
        (f"{JAN}&bucket=day", JAN_ARGS),
        (
            f"{DAY1}&bucket=hour&customer=alpha",
            ["--from", "2026-01-01", "--to", "2026-01-02", "--bucket", "hour", "--customer=alpha"],
        ),
        (f"{JAN}&consumer=stray", [*JAN_ARGS, "--consumer", "stray"]),
        (f"{JAN}&key=sha256:{'ff' * 32}", [*JAN_ARGS, "--key", "sha256:" + "ff" * 32]),
    ],
)
def test_usage_json_is_the_cli_json(
    dashboard: Server, store: Setup, query: str, args: list[str]
) -> None:
    page = dashboard.json(f"/usage.json?{query}")
    assert page == cli_json(store, "timeline", *args)
    assert page["totals"]["events"] > 0


def test_timeline_adds_up_to_usage_report(dashboard: Server, store: Setup) -> None:
    """Two queries written apart (timeline vs ``billing usage``) agree on every model."""
    page = dashboard.json(f"/usage.json?{JAN}")
    report = cli_json(
        store, "usage", "--from", "2026-01-01", "--to", "2026-02-01", "--group-by", "model",
        "--format", "json",
    )  # fmt: skip
    by_model: dict[str, int] = {}
    for r in report:
        by_model[r["model"]] = by_model.get(r["model"], 0) + r["total"]
    assert {m["model"]: m["total"] for m in page["models"]} == by_model
    assert sum(r["tokens"] for r in page["by_model"]) == page["totals"]["total"]
    assert sum(r["tokens"] for r in page["by_type"]) == page["totals"]["total"]
    # one event every 7 minutes: 31 days of January
    assert page["totals"]["events"] == math.ceil(31 * 24 * 60 / 7)


def test_usage_html_shows_the_json_numbers(dashboard: Server) -> None:
    status, body = dashboard.get(f"/usage?{JAN}&customer=alpha")
    assert status == 200
    page = body.decode()
    data = dashboard.json(f"/usage.json?{JAN}&customer=alpha")
    assert f'<div id="total-tokens">{data["totals"]["total"]:,}</div>' in page
    for m in data["models"]:
        assert f'<td data-field="total" class="num">{m["total"]:,}</td>' in page
    assert 'href="/usage.json?from=2026-01-01T00%3A00%3A00Z' in page


# --------------------------------------------------------------------------- health


def _quantile(values: list[float], q: float) -> Decimal:
    v = sorted(values)
    return Decimal(str(v[math.floor((len(v) - 1) * q)])).quantize(Decimal("0.1"))


def test_health_from_the_events(dashboard: Server, store: Setup) -> None:
    page = dashboard.json(f"/health.json?{DAY1}&bucket=hour")
    assert page == cli_json(store, "health", "--from", "2026-01-01", "--to", "2026-01-02")
    events = [i for i in range(12137) if i * 7 < 24 * 60]  # the seed's formula
    for row in page["providers"]:
        mine = [i for i in events if (i % 4 == 3) == (row["provider"] == "anthropic")]
        errors = [i for i in mine if i % 29 == 0 or i % 31 == 0]
        ttft = [50.0 + (i % 20) * 5 + (100 if i % 4 == 3 else 0) for i in mine]
        assert row["calls"] == len(mine)
        assert Decimal(row["calls_per_min"]) == (Decimal(len(mine)) / 1440).quantize(
            Decimal("0.01")
        )
        assert row["errors"] == len(errors)
        assert Decimal(row["error_pct"]) == (Decimal(len(errors) * 100) / len(mine)).quantize(
            Decimal("0.01")
        )
        assert row["estimated"] == len([i for i in mine if i % 17 == 0])
        assert Decimal(row["ttft_p50_ms"]) == _quantile(ttft, 0.5)
        assert Decimal(row["ttft_p95_ms"]) == _quantile(ttft, 0.95)
        assert Decimal(row["ttft_p99_ms"]) == _quantile(ttft, 0.99)
    assert sum(r["calls"] for r in page["series"]) == len(events)
    assert len({r["bucket"] for r in page["series"]}) == 24


# --------------------------------------------------------------------------- unbilled


def test_unbilled_is_the_cli_json(dashboard: Server, store: Setup) -> None:
    page = dashboard.json(f"/unbilled.json?{JAN}")
    assert page == cli_json(store, "unbilled", "--from", "2026-01-01", "--to", "2026-02-01")
    cli_rows = cli_json(
        store, "usage", "--unbilled", "--group-by", "model", "--from", "2026-01-01T00:00:00Z",
        "--to", "2026-02-01T00:00:00Z", "--format", "json",
    )  # fmt: skip
    # the CLI's covered-but-unpriced rows are the page's "unpriced" table, in other words
    assert page["rows"] == [r for r in cli_rows if not is_unpriced(r["reason"])]
    cli_unpriced = [r for r in cli_rows if is_unpriced(r["reason"])]
    assert {r["reason"] for r in cli_unpriced} == {"no rate card of plan 'pro' prices it"}
    assert sum(r["total"] for r in cli_unpriced) == sum(u["tokens"] for u in page["unpriced"])
    reasons = {r["reason"]: r["total"] for r in page["reasons"]}
    # beta starts on the 15th: its earlier usage is outside subscriptions
    assert set(reasons) == {
        "unknown key",
        "consumer not linked to a customer",
        "outside subscriptions",
        "no price in the plan",
    }
    assert sum(r["total"] for r in page["rows"]) == sum(
        v for k, v in reasons.items() if k != "no price in the plan"
    )
    # o3-mini is the one model no plan prices: all of alpha's o3-mini usage is unpriced
    alpha = dashboard.json(f"/usage.json?{JAN}&customer=alpha")
    o3 = next(m for m in alpha["models"] if m["model"] == "o3-mini")
    unpriced = [u for u in page["unpriced"] if u["customer"] == "alpha"]
    assert {u["model"] for u in page["unpriced"]} == {"o3-mini"}
    assert {u["token_type"]: u["tokens"] for u in unpriced} == {
        tt: o3[tt] for tt in ("input", "cached_input", "cache_write", "output") if o3[tt]
    }
    assert reasons["no price in the plan"] == sum(u["tokens"] for u in page["unpriced"])


# --------------------------------------------------------------------------- customers


def test_customer_page_is_made_of_the_cli_answers(dashboard: Server, store: Setup) -> None:
    page = dashboard.json("/customers/alpha.json?at=2026-02-10")
    preview = cli_json(
        store, "invoice", "preview", "--customer", "alpha", "--at", "2026-02-10", "--format", "json"
    )
    # the preview is live: only its watermark (now) differs between two calls
    for inv in (page["period_so_far"], preview):
        inv.pop("watermark")
        for line in inv["lines"]:
            for w in line["detail"].get("windows", []):
                w.pop("ingested_until")
    assert page["period_so_far"] == preview
    listed = cli_json(store, "invoice", "list", "--customer", "alpha", "--format", "json")
    assert page["invoices"] == list(reversed(listed))
    assert page["last_invoiced_month"] == "2026-02"
    margin = cli_json(store, "margin", "--period", "2026-02", "--format", "json")
    mine = cli_json(
        store, "margin", "--period", "2026-02", "--customer", "alpha", "--format", "json"
    )
    assert mine == [r for r in margin if r["customer"] == "alpha"]
    twin = dashboard.json("/customers/alpha/margin.json")
    assert twin == {"customer": "alpha", "name": "Alpha Ltd", "period": "2026-02", "rows": mine}
    assert dashboard.json("/customers/alpha/margin.json?period=2026-01")["rows"] == cli_json(
        store, "margin", "--period", "2026-01", "--customer", "alpha", "--format", "json"
    )
    usage = cli_json(
        store, "timeline", "--customer", "alpha", "--from", "2026-02-01", "--to", "2026-02-10"
    )
    assert page["usage"] == usage
    assert page["panels"] == {}  # no entitlements module yet: nothing shown


def test_the_last_invoiced_month_is_the_latest_period_after_a_backfill(
    tmp_path: Path, page: Any, shots: Path
) -> None:
    """February invoiced first, January later (a backfill): the last invoiced month is
    still February, the one whose period ends last, not that of the last invoice issued."""
    db = tmp_path / "meterline.duckdb"
    with billing_store(str(db), create=True) as con:
        con.execute(EVENTS_SQL)
    s = Setup(db, write_catalog(tmp_path, CATALOG))
    for month in ("2026-02", "2026-01"):
        result = run(s, "invoice", "generate", "--period", month)
        assert result.exit_code == 0, result.output
    server = start_dashboard(s)
    try:
        data = server.json("/customers/alpha.json?at=2026-02-10")
        assert [i["number"] for i in data["invoices"]][0] == "INV-000003"  # January's
        assert data["last_invoiced_month"] == "2026-02"
        assert server.json("/customers/alpha/margin.json")["period"] == "2026-02"
        load(page, server, "/customers/alpha?at=2026-02-10", shots, "backfilled")
        assert page.get_by_role("link", name="Margin against list price, 2026-02").count() == 1
        assert page.get_by_role("link", name="Statement for 2026-02").count() == 1
    finally:
        stop(server)


def test_customers_list_and_errors(dashboard: Server) -> None:
    listed = dashboard.json("/customers.json?at=2026-01-20")
    assert [(c["customer"], c["plan"]) for c in listed["customers"]] == [
        ("alpha", "pro"),
        ("beta", "pro"),
    ]
    status, body = dashboard.get("/customers/nobody.json")
    assert (status, json.loads(body)) == (
        404,
        {"error": "unknown customer 'nobody' (known customers: alpha, beta)"},
    )
    status, body = dashboard.get("/usage?bucket=week")
    assert status == 400 and b"unknown bucket &#x27;week&#x27;" in body
    status, body = dashboard.get("/usage.json?key=sk-pasted-0123456789")
    assert status == 400 and b"not a fingerprint" in body and b"sk-pasted" not in body
    status, body = dashboard.get("/usage.json?from=yesterday")
    assert status == 400 and b"is not a date or time" in body
    # a superscript two (int() refuses it: was a 500), an Arabic-Indic three: ASCII digits only
    for rows in ("%C2%B2", "%D9%A3", "0", "-1"):
        status, body = dashboard.get(f"/unbilled?rows={rows}")
        assert status == 400 and b"is not a number of rows such as 200, or all" in body, rows
    for query in ("/usage?to=0001-01-02", "/customers/alpha?at=9999-12-31T23:59:59"):
        status, body = dashboard.get(query)  # was a 500 (OverflowError, PeriodRangeError)
        assert status == 400 and b"is out of range (years 1970 to 9998, in UTC)" in body, query
    status, body = dashboard.get(  # under a second: was a 500 (division by zero minutes)
        "/health.json?from=2026-01-01&to=2026-01-01T00:00:00.000001"
    )
    assert status == 200, body
    assert dashboard.get("/nothing-here")[0] == 404
    assert dashboard.get("/assets/../../etc/passwd")[0] == 404
    assert dashboard.get("/")[0] == 200  # redirected to /usage


def test_customer_chart_stops_at_at(dashboard: Server) -> None:
    """The period's chart counts what the preview beside it counts: usage before ``at``."""
    first = dashboard.json("/customers/alpha.json?at=2026-02-01T00:00:00Z")
    assert [ln["quantity"] for ln in first["period_so_far"]["lines"] if ln["kind"] != "flat"] == [
        "0",
        "0",
        "0",
    ]
    assert first["usage"]["by_model"] == [] and first["usage"]["totals"]["total"] == 0
    page = dashboard.json("/customers/alpha.json?at=2026-02-10T06:00:00Z")
    assert page["usage"]["range"]["to"] == "2026-02-10T06:00:00Z"
    gpt_in = next(ln for ln in page["period_so_far"]["lines"] if ln["feature"] == "gpt-in")
    counted = sum(
        m["input"] + m["cached_input"]
        for m in page["usage"]["models"]
        if m["provider"] == "openai" and m["model"].startswith("gpt-4o")
    )
    assert counted == int(Decimal(gpt_in["quantity"]))


def test_missing_things_are_404(dashboard: Server) -> None:
    for path, message in (
        ("/invoices/INV-999999", "no invoice 'INV-999999'"),
        ("/invoices/INV-999999.pdf", "no invoice 'INV-999999'"),
        ("/customers/nobody", "unknown customer 'nobody'"),
        ("/customers/nobody/margin", "unknown customer 'nobody'"),
        ("/statements/nobody/2026-01", "unknown customer 'nobody'"),
        ("/statements/alpha/2026-05", "no invoice for 'alpha' in 2026-05"),
    ):
        status, body = dashboard.get(path)
        assert status == 404, (path, status)
        assert message.replace("'", "&#x27;") in body.decode(), path
    status, body = dashboard.get("/usage?bucket=week")
    assert status == 400  # a bad query is still the client's error


# --------------------------------------------------------------------------- documents


def test_invoice_and_statement_twins(dashboard: Server, store: Setup) -> None:
    assert dashboard.json("/invoices/INV-000001.json") == cli_json(
        store, "invoice", "show", "INV-000001", "--format", "json"
    )
    assert dashboard.json("/statements/alpha/2026-01.json") == cli_json(
        store, "statement", "--customer", "alpha", "--period", "2026-01", "--format", "json"
    )
    status, body = dashboard.get("/invoices/INV-000001.pdf")
    assert status == 200 and body.startswith(b"%PDF-")
    status, body = dashboard.get("/invoices/INV-999999.json")
    assert (status, json.loads(body)) == (404, {"error": "no invoice 'INV-999999'"})


# --------------------------------------------------------------------------- access


def test_read_only_while_a_writer_appends(store: Setup, tmp_path_factory: Any) -> None:
    """Pages keep answering while another connection keeps appending to the same file,
    and each answer counts whole batches (DuckDB's file lock: one side at a time)."""
    server = start_dashboard(store)
    errors: list[str] = []
    batches = 20

    def writer() -> None:
        for n in range(batches):
            with billing_store(store.db) as con:
                con.execute(
                    "INSERT INTO usage_events SELECT * REPLACE ('live-' || ? || '-' || event_id"
                    " AS event_id, TIMESTAMP '2026-06-01' AS ts) FROM usage_events"
                    " WHERE event_id IN ('ev-1', 'ev-2')",
                    [n],
                )

    t = threading.Thread(target=writer)
    try:
        t.start()
        seen = []
        while t.is_alive() or not seen:
            status, body = server.get("/usage.json?from=2026-06-01&to=2026-06-02")
            if status != 200:
                errors.append(body.decode())
                break
            seen.append(json.loads(body)["totals"]["events"])
        t.join()
        final = server.json("/usage.json?from=2026-06-01&to=2026-06-02")["totals"]["events"]
    finally:
        stop(server)
        with billing_store(store.db) as con:
            con.execute("DELETE FROM usage_events WHERE event_id LIKE 'live-%'")
    assert errors == []
    assert all(n % 2 == 0 for n in seen) and seen == sorted(seen)
    assert final == 2 * batches


def request_with_host(server: Server, host: str | None) -> tuple[int, str]:
    import http.client

    conn = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=30)
    conn.putrequest("GET", "/invoices/INV-000001.json", skip_host=True)
    if host is not None:
        conn.putheader("Host", host)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read().decode()
    conn.close()
    return resp.status, body


def test_without_a_token_only_loopback_host_names_are_answered(dashboard: Server) -> None:
    """DNS rebinding: a page at attacker.example re-points its name at 127.0.0.1 and reads
    the dashboard; its requests carry ``Host: attacker.example``, so they are refused."""
    port = dashboard.url.rpartition(":")[2]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}",
                 f"LOCALHOST:{port}", None):  # fmt: skip
        status, _ = request_with_host(dashboard, host)
        assert status == 200, host
    for host in (f"attacker.example:{port}", "attacker.example", f"192.0.2.1:{port}",
                 f"localhost.attacker.example:{port}", ""):  # fmt: skip
        status, body = request_with_host(dashboard, host)
        assert status == 421, host
        assert "not this machine's loopback name" in body and "INV-000001" not in body


def test_binding_beyond_loopback_needs_a_token(store: Setup) -> None:
    result = run(store, "dashboard", "--host", "0.0.0.0", "--port", "0")
    assert result.exit_code == 1
    assert error(result) == (
        "Error: --host 0.0.0.0 makes billing data reachable from other machines: give --token "
        "(or METERLINE_DASHBOARD_TOKEN) so only holders of it can read"
    )


@pytest.mark.parametrize("how", ["--token", "env", "--token-file"])
def test_a_token_that_is_not_printable_ascii_is_refused_at_start(
    store: Setup, tmp_path: Path, how: str
) -> None:
    """``http.server`` reads headers as Latin-1: a token such as ``pässwort`` could never
    match an ``Authorization: Bearer`` header, and the dashboard started anyway."""
    token = "p\u00e4sswort-\u20ac"
    file = tmp_path / "token"
    file.write_text(token + "\n", encoding="utf-8")
    args, env = {
        "--token": (["--token", token], None),
        "env": ([], {"METERLINE_DASHBOARD_TOKEN": token}),
        "--token-file": (["--token-file", str(file)], None),
    }[how]
    with socket.socket() as taken:  # the old code would have served (and never returned)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run(store, "dashboard", "--port", port, *args, env=env)
    assert (result.exit_code, error(result)) == (
        1,
        "Error: the token must be printable ASCII (a browser or client cannot send other "
        "characters in a header); make one with: openssl rand -hex 16",
    )
    assert token not in result.output


def test_a_port_in_use_is_said_before_anything_else_is_read(store: Setup, tmp_path: Path) -> None:
    """The port is taken first: it was tried after the catalog, the store's migrations
    (which wait up to 30 s for another process's lock) and the chart bundle's thread had
    started, seconds before the one line saying the port is in use."""
    broken = Setup(store.db, tmp_path / "catalog.yaml")
    broken.catalog_path.write_text("consumers: [\n", encoding="utf-8")  # not even YAML
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(broken, "dashboard", "--port", str(port))
    assert result.exit_code == 1
    assert error(result) == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_the_token_can_come_from_a_file(store: Setup, tmp_path: Path) -> None:
    """``--token-file``: the token never on the command line (where ``ps`` shows it)."""
    empty = tmp_path / "empty-token"
    empty.write_text("\n", encoding="utf-8")
    result = run(store, "dashboard", "--host", "0.0.0.0", "--port", "0", "--token-file", str(empty))
    assert (result.exit_code, error(result)) == (
        1, f"Error: --token-file {empty}: the file holds no token"
    )  # fmt: skip
    missing = run(store, "dashboard", "--token-file", str(tmp_path / "nope"))
    assert error(missing) == f"Error: --token-file {tmp_path / 'nope'}: No such file or directory"
    token_file = tmp_path / "token"
    token_file.write_text("f1le-token\n", encoding="utf-8")
    server = start_dashboard(store, "--token-file", str(token_file))
    try:
        assert server.get("/usage.json")[0] == 401
        assert server.get("/usage.json", {"Authorization": "Bearer f1le-token"})[0] == 200
        assert "f1le-token" not in " ".join(server.proc.args)
    finally:
        stop(server)


def test_token_protects_every_page(store: Setup) -> None:
    server = start_dashboard(store, env={"METERLINE_DASHBOARD_TOKEN": "s3cret-token"})
    try:
        assert server.get("/usage.json")[0] == 401
        assert server.get("/assets/dashboard.js")[0] == 401
        bad = {"Authorization": "Bearer wrong"}
        assert server.get("/usage.json", bad)[0] == 401
        ok = {"Authorization": "Bearer s3cret-token"}
        assert server.get("/customers.json", ok)[0] == 200
        import http.client

        conn = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=30)
        conn.request("GET", "/customers?token=s3cret-token&at=2026-01-20")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 302
        assert resp.getheader("Location") == "/customers?at=2026-01-20"
        cookie = resp.getheader("Set-Cookie") or ""
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        conn.request("GET", "/customers.json", headers={"Cookie": cookie.split(";")[0]})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        conn.close()
    finally:
        stop(server)
