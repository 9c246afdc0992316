"""Alert delivery and the entitlement report, end to end through the billing CLI: the
order and signing time of webhook posts, the credit alert's period, a missing proxy state."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from billing.cli import main as billing_cli
from tests.billing.events import Event, add_events, write

SECRET = "whsec-test-0123456789"
PLAN = """
version: 1
consumers: [{{name: agent-a}}]
features:
  - {{key: out, name: Output, meter: {{token_types: [output]}}}}
plans:
  - key: starter
    name: Starter
    currency: USD
    prepaid: true
    rate_cards:
      - {{key: o, name: O, feature: out, price: {{type: unit, amount: "1.00", per: 1000}}}}
    entitlements: [{{feature: out, limit: 1000, enforcement: soft}}]
customers:
  - key: acme
    name: ACME
    currency: USD
    consumers: [agent-a]
    subscriptions: [{{plan: starter, start: "2026-01-01T00:00:00Z"}}]
alerts:
  webhooks: [{{url: "http://127.0.0.1:{port}/hook", secret_env: HOOK_SECRET}}]
  entitlement_percent: [50, 80, 100]
  credit_balance_below: ["10.00"]
"""


class SlowReceiver:
    """A webhook endpoint taking ``delay`` seconds per POST; records (time, headers, body)."""

    def __init__(self, delay: float) -> None:
        self.received: list[tuple[float, dict[str, str], bytes]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                received.append((time.time(), headers, body))
                time.sleep(delay)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[SlowReceiver]:
    r = SlowReceiver(delay=1.5)
    yield r
    r.server.shutdown()
    r.server.server_close()


def _run(db: Path, catalog: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(billing_cli, ["--db", str(db), "--catalog", str(catalog), *args])
    return result.exit_code, result.output


def test_one_round_is_posted_in_threshold_order_each_signed_when_sent(
    tmp_path: Path, receiver: SlowReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four alerts in one round to a receiver taking 1.5 s each. Before: posted in the
    ids' hash order, all signed with the round's start (the last one 4.5 s old on arrival,
    so a backlog soon fails the 300 s check). Now 50, 80, 100 % in order, each signed when
    posted; the credit alert's period_start is the period's start (before: its end)."""
    catalog = write(tmp_path / "catalog.yaml", PLAN.format(port=receiver.port))
    db = tmp_path / "meterline.duckdb"
    add_events(db, Event(datetime.now(UTC) - timedelta(seconds=1), output=1000))
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    # The four of this month, and the credit alert of last month (no credit then either),
    # which has ended: rounds look back at the period before the current one.
    assert _run(db, catalog, "alerts", "deliver") == (0, "queued 5, delivered 5, failed 0\n")
    received = [json.loads(body) for _, _, body in receiver.received]
    bodies = [b for b in received if not b["data"]["period_ended"]]
    (ended,) = [b for b in received if b["data"]["period_ended"]]
    assert [b["data"].get("percent") for b in bodies if b["type"] == "entitlement.threshold"] == [
        50,
        80,
        100,
    ]
    for at, headers, _ in receiver.received:
        signed = int(dict(f.split("=", 1) for f in headers["meterline-signature"].split(","))["t"])
        assert at - signed < 2.0, f"signed {at - signed:.1f} s before it arrived"
    now = datetime.now(UTC)
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    starts = {b["type"]: b["period_start"] for b in bodies}
    assert starts["credit.balance_below"] == f"{month:%Y-%m-%dT%H:%M:%SZ}"
    assert starts["credit.balance_below"] == starts["entitlement.threshold"]
    last_month = (month - timedelta(days=1)).replace(day=1)
    assert (ended["type"], ended["period_start"]) == (
        "credit.balance_below",
        f"{last_month:%Y-%m-%dT%H:%M:%SZ}",
    )


def test_entitlements_report_refuses_a_proxy_state_it_cannot_read(tmp_path: Path) -> None:
    """Before: a missing --proxy-state file was skipped, RESERVED silently 0."""
    catalog = write(tmp_path / "catalog.yaml", PLAN.format(port=9))
    db = tmp_path / "meterline.duckdb"
    add_events(db, Event(datetime.now(UTC) - timedelta(seconds=1), output=10))
    missing = tmp_path / "nowhere" / "governance.json"
    code, out = _run(db, catalog, "entitlements", "--proxy-state", str(missing))
    assert (code, out) == (
        1,
        f"Error: proxy state {missing}: cannot read it: No such file or directory\n",
    )
    state = tmp_path / "governance.json"
    state.write_text(json.dumps({"reserved": {}}))
    assert _run(db, catalog, "entitlements", "--proxy-state", str(state))[0] == 0


def test_entitlements_report_refuses_a_proxy_state_of_another_shape(tmp_path: Path) -> None:
    """Before: a JSON list, or a reservation that is not a whole number, was a traceback."""
    catalog = write(tmp_path / "catalog.yaml", PLAN.format(port=9))
    db = tmp_path / "meterline.duckdb"
    add_events(db, Event(datetime.now(UTC) - timedelta(seconds=1), output=10))
    state = tmp_path / "governance.json"
    for text in ("[]", '{"reserved": []}', '{"reserved": {"c": "x"}}', '{"reserved": {"c": 1.5}}'):
        state.write_text(text)
        code, out = _run(db, catalog, "entitlements", "--proxy-state", str(state))
        assert (code, out) == (1, f"Error: proxy state {state}: not a proxy's governance.json\n")


def test_entitlements_report_leaves_out_a_stopped_proxys_reservations(tmp_path: Path) -> None:
    """A proxy killed with 20 calls in flight left 2,000 reserved in its state file, and
    the report went on showing them (remaining 3,000 of 5,000) with no word of it."""
    catalog = write(tmp_path / "catalog.yaml", PLAN.format(port=9))
    db = tmp_path / "meterline.duckdb"
    add_events(db, Event(datetime.now(UTC) - timedelta(seconds=1), output=10))
    now = datetime.now(UTC)
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    counter = f"acme/out/P1M/{month:%Y-%m-%dT%H:%M:%SZ}"
    live, dead = tmp_path / "live.json", tmp_path / "dead.json"
    for path, age in ((live, 1), (dead, 3600)):
        written = (now - timedelta(seconds=age)).isoformat()
        path.write_text(
            json.dumps({"written_at": written, "refresh_s": 2.0, "reserved": {counter: 300}})
        )
    args = ["--db", str(db), "--catalog", str(catalog), "entitlements", "--format", "json"]
    states = ["--proxy-state", str(live), "--proxy-state", str(dead)]
    result = CliRunner().invoke(billing_cli, [*args, *states])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert [(r["used"], r["reserved"]) for r in rows if r["feature"] == "out"] == [
        (10, 300)
    ]  # the live proxy's only
    assert f"warning: proxy state {dead}: written 3600 s ago" in result.stderr
    assert "its 300 reserved units are not counted" in result.stderr


def test_entitlements_report_says_a_customer_has_no_active_subscription(
    tmp_path: Path,
) -> None:
    """A customer whose only subscription ended: the proxy refuses every call (403 "no
    active subscription") while the report printed ``(none)`` alone, exit 0."""
    ended = PLAN.format(port=9).replace(
        'start: "2026-01-01T00:00:00Z"}',
        'start: "2026-01-01T00:00:00Z", end: "2026-02-01T00:00:00Z"}',
    )
    catalog = write(tmp_path / "catalog.yaml", ended)
    db = tmp_path / "meterline.duckdb"
    add_events(db, Event(datetime(2026, 1, 15, tzinfo=UTC), output=10))
    result = CliRunner().invoke(
        billing_cli,
        ["--db", str(db), "--catalog", str(catalog), "entitlements", "--customer", "acme"],
    )
    assert result.exit_code == 0
    assert result.stdout == "(none)\n"
    assert result.stderr == (
        "acme: no active subscription since 2026-02-01T00:00:00Z (its subscription to plan "
        "'starter' ended then); the proxy refuses its calls (403)\n"
    )
    json_out = CliRunner().invoke(
        billing_cli,
        ["--db", str(db), "--catalog", str(catalog), "entitlements", "--customer", "acme",
         "--format", "json"],
    )  # fmt: skip
    assert json.loads(json_out.stdout) == []
    assert json_out.stderr.startswith("acme: no active subscription since 2026-02-01")

    later = PLAN.format(port=9).replace('start: "2026-01-01', 'start: "2999-01-01')
    catalog = write(tmp_path / "later.yaml", later)
    result = CliRunner().invoke(
        billing_cli,
        ["--db", str(db), "--catalog", str(catalog), "entitlements", "--customer", "acme"],
    )
    assert result.stderr == (
        "acme: no active subscription; the next starts at 2999-01-01T00:00:00Z (plan 'starter')\n"
    )
    # A customer with an active subscription gets no such line.
    catalog = write(tmp_path / "active.yaml", PLAN.format(port=9))
    result = CliRunner().invoke(
        billing_cli,
        ["--db", str(db), "--catalog", str(catalog), "entitlements", "--customer", "acme"],
    )
    assert (result.exit_code, result.stderr) == (0, "")
