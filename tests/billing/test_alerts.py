"""Alerts: thresholds fire once per period, a receiver that is down then up gets every
alert exactly once, and each signature verifies with the three-line recipe of docs/governance.md."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from billing.alerts.evaluate import evaluate
from billing.alerts.outbox import deliver, enqueue
from billing.cli import main as billing_cli
from billing.store import billing_store
from meterline.catalog import Catalog, load_catalog
from tests.billing.events import Event, add_events, write

SECRET = "whsec-test-0123456789"


class Receiver:
    """A webhook endpoint on 127.0.0.1 recording (headers, body) of each POST."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["content-length"]))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = Receiver(port)
    yield r
    r.stop()


def verify(header: str, body: bytes, secret: bytes) -> bool:
    """The recipe of docs/governance.md, verbatim."""
    fields = dict(item.split("=", 1) for item in header.split(","))
    expected = hmac.new(secret, f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) < 300


SOFT_LIMIT = "[{feature: out, limit: 1000, enforcement: soft}]"


def _hooks_catalog(
    path: Path, urls: Sequence[str], entitlements: str = SOFT_LIMIT, percents: str = "[50]"
) -> Path:
    """agent-a of acme on a plan with ``entitlements``; alerts at ``percents`` to the
    webhooks ``urls`` (each signed with ``HOOK_SECRET``)."""
    hooks = ", ".join(f'{{url: "{u}", secret_env: HOOK_SECRET}}' for u in urls)
    return write(
        path,
        f"""
        version: 1
        consumers: [{{name: agent-a}}]
        features:
          - {{key: out, name: Output, meter: {{token_types: [output]}}}}
        plans:
          - key: starter
            name: Starter
            currency: USD
            entitlements: {entitlements}
        customers:
          - key: acme
            name: ACME
            currency: USD
            consumers: [agent-a]
            subscriptions: [{{plan: starter, start: "2026-01-01T00:00:00Z"}}]
        alerts:
          webhooks: [{hooks}]
          entitlement_percent: {percents}
        """,
    )


def test_receiver_down_then_up_gets_every_alert_once(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = _hooks_catalog(
        tmp_path / "catalog.yaml",
        [f"http://127.0.0.1:{receiver.port}/hook"],
        percents="[50, 80, 100]",
    )
    db = tmp_path / "meterline.duckdb"
    now = datetime.now(UTC) - timedelta(seconds=1)
    add_events(db, Event(now, output=850))
    monkeypatch.setenv("HOOK_SECRET", SECRET)

    def run(*args: str) -> str:
        result = CliRunner().invoke(
            billing_cli, ["--db", str(db), "--catalog", str(catalog), *args]
        )
        assert result.exit_code == 0, result.output
        return result.output

    assert run("alerts", "deliver", "--min-backoff", "0") == "queued 2, delivered 0, failed 2\n"
    listed = json.loads(run("alerts", "list", "--format", "json"))
    assert [a["attempts"] for a in listed] == [1, 1]
    assert all(a["last_error"].startswith("cannot connect") for a in listed)
    receiver.start()
    assert run("alerts", "deliver", "--min-backoff", "0") == "queued 0, delivered 2, failed 0\n"
    assert run("alerts", "deliver") == "queued 0, delivered 0, failed 0\n"  # fired once
    add_events(db, Event(now, output=150))  # 1000 of 1000: the 100% threshold
    assert run("alerts", "deliver") == "queued 1, delivered 1, failed 0\n"

    bodies = [json.loads(body) for _, body in receiver.received]
    assert sorted((b["type"], b["data"]["percent"]) for b in bodies) == [
        ("entitlement.threshold", 50),
        ("entitlement.threshold", 80),
        ("entitlement.threshold", 100),
    ]
    assert len({b["id"] for b in bodies}) == 3
    for headers, body in receiver.received:
        assert verify(headers["meterline-signature"], body, SECRET.encode())
        assert not verify(headers["meterline-signature"], body + b" ", SECRET.encode())
        assert headers["meterline-event-id"] == json.loads(body)["id"]

    first = bodies[0]["id"]
    assert run("alerts", "replay", first).startswith(f"{first}: queued again for 1 webhook")
    assert run("alerts", "deliver") == "queued 0, delivered 1, failed 0\n"
    assert json.loads(receiver.received[-1][1])["id"] == first


def test_thresholds_are_of_the_limit_the_proxy_enforces_with_unit_grants(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hard limit of 1,000 plus 500 granted units: the proxy admits up to 1,500, so
    100 % fires at 1,500, not at 1,110 (before: 100 % at 1,110 of "limit 1000", and
    nothing when the customer was actually blocked)."""
    catalog = write(
        tmp_path / "catalog.yaml",
        f"""
        version: 1
        consumers: [{{name: agent-a}}]
        features:
          - {{key: out, name: Output, meter: {{token_types: [output]}}}}
        plans:
          - key: starter
            name: Starter
            currency: USD
            entitlements: [{{feature: out, limit: 1000}}]
        customers:
          - key: acme
            name: ACME
            currency: USD
            consumers: [agent-a]
            subscriptions: [{{plan: starter, start: "2026-01-01T00:00:00Z"}}]
        alerts:
          webhooks: [{{url: "http://127.0.0.1:{receiver.port}/hook", secret_env: HOOK_SECRET}}]
          entitlement_percent: [50, 80, 100]
        """,
    )
    db = tmp_path / "meterline.duckdb"
    now = datetime.now(UTC) - timedelta(seconds=1)
    add_events(db, Event(now, output=1110))
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    receiver.start()

    def run(*args: str) -> str:
        result = CliRunner().invoke(
            billing_cli, ["--db", str(db), "--catalog", str(catalog), *args]
        )
        assert result.exit_code == 0, result.output
        return result.output

    run("credits", "grant", "--customer", "acme", "--feature", "out", "--units", "500")
    assert run("alerts", "deliver") == "queued 1, delivered 1, failed 0\n"  # 74 %: 50 only
    add_events(db, Event(now, output=390))  # 1,500: the proxy refuses from here
    assert run("alerts", "deliver") == "queued 2, delivered 2, failed 0\n"
    data = [json.loads(body)["data"] for _, body in receiver.received]
    assert [(d["percent"], d["used"], d["limit"]) for d in data] == [
        (50, 1110, 1500),
        (80, 1500, 1500),
        (100, 1500, 1500),
    ]
    assert (data[-1]["entitlement_limit"], data[-1]["granted_units"]) == (1000, 500)


def _free_port() -> int:
    """A port on 127.0.0.1 nobody listens on: a webhook that is down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _invoke(db: Path, catalog: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(billing_cli, ["--db", str(db), "--catalog", str(catalog), *args])
    return result.exit_code, result.output


def test_a_webhook_down_for_days_waits_an_hour_and_the_others_still_get_theirs(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After 43 failures (a ~35 h outage at the default 10 s) ``10 s * 2**43`` overflowed
    ``timedelta`` before the one-hour cap: every round crashed on that row, first due,
    before anything was posted or the row updated, so delivery was wedged for good."""
    down = f"http://127.0.0.1:{_free_port()}/down"
    up = f"http://127.0.0.1:{receiver.port}/up"
    catalog = _hooks_catalog(tmp_path / "catalog.yaml", [down, up])
    db = tmp_path / "meterline.duckdb"
    add_events(db, Event(datetime.now(UTC) - timedelta(seconds=1), output=500))
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    assert _invoke(db, catalog, "alerts", "deliver", "--min-backoff", "0") == (
        0,
        "queued 2, delivered 0, failed 2\n",
    )
    with duckdb.connect(str(db)) as con:  # the outage's hourly retries, fast-forwarded
        con.execute("UPDATE alert_outbox SET next_attempt_at = TIMESTAMP '2020-01-01'")
        con.execute("UPDATE alert_outbox SET attempts = 43 WHERE webhook_url = ?", [down])
    receiver.start()

    before = datetime.now(UTC).replace(tzinfo=None)
    assert _invoke(db, catalog, "alerts", "deliver") == (0, "queued 0, delivered 1, failed 1\n")
    after = datetime.now(UTC).replace(tzinfo=None)
    assert len(receiver.received) == 1
    with duckdb.connect(str(db)) as con:
        row = con.execute(
            "SELECT attempts, next_attempt_at FROM alert_outbox WHERE webhook_url = ?", [down]
        ).fetchone()
    assert row is not None
    assert row[0] == 44
    assert before + timedelta(hours=1) - timedelta(seconds=1) <= row[1]
    assert row[1] <= after + timedelta(hours=1)


def test_an_alert_for_a_webhook_gone_from_the_catalog_is_skipped_not_blocking(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An undelivered row whose webhook left the catalog (or whose secret was unset) made
    every round fail with ``Error: webhook ... is no longer in the catalog``: no webhook got
    anything, for good. Now it is skipped (a line each, exit 1), kept, posted if the
    webhook comes back, and ``alerts drop-orphaned`` removes it."""
    base = f"http://127.0.0.1:{receiver.port}"
    old, new, gone = f"{base}/old", f"{base}/new", f"http://127.0.0.1:{_free_port()}/gone"
    db = tmp_path / "meterline.duckdb"
    now = datetime.now(UTC) - timedelta(seconds=1)
    add_events(db, Event(now, output=500))
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    first = _hooks_catalog(tmp_path / "first.yaml", [old, gone], percents="[50, 80]")
    assert _invoke(db, first, "alerts", "deliver", "--min-backoff", "0") == (
        0,
        "queued 2, delivered 0, failed 2\n",
    )
    listed = json.loads(_invoke(db, first, "alerts", "list", "--format", "json")[1])
    (fifty,) = {a["event_id"] for a in listed}

    receiver.start()  # the hook moved from /old to /new; /gone is gone
    moved = _hooks_catalog(tmp_path / "moved.yaml", [new], percents="[50, 80]")
    add_events(db, Event(now, output=300))  # 80 % crossed
    code, out = _invoke(db, moved, "alerts", "deliver", "--min-backoff", "0")
    assert (code, out.splitlines()) == (
        1,
        [
            f"{fifty} to {old}: not sent, the webhook is no longer in the catalog",
            f"{fifty} to {gone}: not sent, the webhook is no longer in the catalog",
            "queued 2, delivered 2, failed 0, skipped 2",
        ],
    )
    assert sorted(json.loads(b)["data"]["percent"] for _, b in receiver.received) == [50, 80]
    listed = json.loads(_invoke(db, moved, "alerts", "list", "--format", "json")[1])
    assert sorted((a["webhook_url"], a["orphaned"]) for a in listed) == sorted(
        [(old, True), (gone, True), (new, False), (new, False)]
    )

    back = _hooks_catalog(
        tmp_path / "back.yaml", [old, new], percents="[50, 80]"
    )  # /old is back ...
    monkeypatch.delenv("HOOK_SECRET")  # ... but its secret is not set: skipped too
    code, out = _invoke(db, back, "alerts", "deliver", "--min-backoff", "0")
    assert code == 1
    assert out.count("not sent, environment variable HOOK_SECRET is not set") == 2
    assert out.endswith("queued 1, delivered 0, failed 0, skipped 3\n")
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    code, out = _invoke(db, back, "alerts", "deliver", "--min-backoff", "0")
    assert (code, out.splitlines()[-1]) == (1, "queued 0, delivered 2, failed 0, skipped 1")
    assert sorted(h["meterline-event-id"] for h, _ in receiver.received).count(fifty) == 2

    assert _invoke(db, back, "alerts", "drop-orphaned") == (
        0,
        "dropped 1 undelivered alert(s) of webhooks no longer in the catalog\n",
    )
    assert _invoke(db, back, "alerts", "deliver") == (0, "queued 0, delivered 0, failed 0\n")
    assert _invoke(db, back, "alerts", "replay", fifty) == (
        0,
        f"{fifty}: queued again for 2 webhook(s); run `billing alerts deliver`\n",
    )


def _limits_catalog(path: Path, port: int, entitlements: str) -> Catalog:
    return load_catalog(_hooks_catalog(path, [f"http://127.0.0.1:{port}/hook"], entitlements))


def _round(db: Path, catalog: Catalog, now: datetime) -> tuple[int, int]:
    """One ``alerts deliver`` round at ``now``: (rows queued, rows delivered)."""
    with billing_store(db) as con:
        added = enqueue(con, evaluate(con, catalog, now), catalog.alerts.webhooks, now)
        return added, deliver(con, catalog, now).delivered


def test_a_monthly_and_a_daily_limit_starting_together_get_distinct_alert_ids(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A monthly 1,000 and a daily 100 on one feature both start on the 1st: their 50 %
    alerts had one id (customer, feature, percent, start), so receivers deduplicating on
    it dropped one, and the monthly 50 % crossed on the 5th was never queued: the daily's
    row of the 1st already held that id."""
    monthly = "{feature: out, limit: 1000, enforcement: soft}"
    daily = "{feature: out, limit: 100, enforcement: soft, period: P1D}"
    one_limit = _limits_catalog(tmp_path / "one.yaml", receiver.port, f"[{daily}]")
    two_limits = _limits_catalog(tmp_path / "two.yaml", receiver.port, f"[{monthly}, {daily}]")
    db = tmp_path / "meterline.duckdb"
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    receiver.start()

    # Dec 1, 60 used, the daily limit alone (as an outbox from before this fix holds it):
    # its id is the one a single limit always had, pinned here.
    add_events(db, Event(datetime(2026, 12, 1, 10, tzinfo=UTC), output=60))
    dec1 = datetime(2026, 12, 1, 12, tzinfo=UTC)
    assert _round(db, one_limit, dec1) == (1, 1)
    first = json.loads(receiver.received[0][1])
    assert first["id"] == "evt_ca4d5c5ece837cc53b1ce7a1"
    # A monthly limit added (or an upgrade over such an outbox): the daily 50 % of Dec 1,
    # now under an id with its end, is not sent again.
    assert _round(db, two_limits, dec1) == (0, 0)

    add_events(
        db,
        Event(datetime(2026, 12, 4, 10, tzinfo=UTC), output=490),
        Event(datetime(2026, 12, 5, 10, tzinfo=UTC), output=10),
    )  # 560 in December: the monthly 50 % (and the daily 50 % of Dec 4, which had ended)
    assert _round(db, two_limits, datetime(2026, 12, 5, 12, tzinfo=UTC)) == (2, 2)
    dec4, second = sorted(
        (json.loads(body) for _, body in receiver.received[1:]), key=lambda b: b["data"]["limit"]
    )
    assert (dec4["period_start"], dec4["data"]["period_ended"]) == ("2026-12-04T00:00:00Z", True)
    assert (second["data"]["limit"], second["data"]["percent"]) == (1000, 50)
    assert second["period_start"] == first["period_start"] == "2026-12-01T00:00:00Z"
    assert second["id"] != first["id"]

    # On a fresh store, both crossings on the 1st: two alerts, two ids.
    fresh = tmp_path / "fresh.duckdb"
    add_events(fresh, Event(datetime(2026, 12, 1, 10, tzinfo=UTC), output=600))
    assert _round(fresh, two_limits, dec1) == (2, 2)
    ids = [json.loads(body)["id"] for _, body in receiver.received[3:]]
    assert len(set(ids)) == 2


HARD_DAILY = "[{feature: out, limit: 100, period: P1D}]"


def test_a_threshold_crossed_just_before_its_period_ended_fires_after_it(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daily hard cap of 100 crossed 10 s before midnight, the next round 0.5 s after:
    rounds evaluated only the current periods, so the crossings of the day that had just
    ended were never queued (``queued 0``), whatever the polling interval."""
    catalog = load_catalog(
        _hooks_catalog(
            tmp_path / "catalog.yaml",
            [f"http://127.0.0.1:{receiver.port}/hook"],
            HARD_DAILY,
            percents="[50, 80, 100]",
        )
    )
    db = tmp_path / "meterline.duckdb"
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    receiver.start()
    add_events(db, Event(datetime(2026, 12, 1, 12, tzinfo=UTC), output=10))
    assert _round(db, catalog, datetime(2026, 12, 1, 23, 59, 30, tzinfo=UTC)) == (0, 0)
    add_events(db, Event(datetime(2026, 12, 1, 23, 59, 50, tzinfo=UTC), output=110))

    midnight = datetime(2026, 12, 2, tzinfo=UTC)
    assert _round(db, catalog, midnight + timedelta(milliseconds=500)) == (3, 3)
    bodies = [json.loads(body) for _, body in receiver.received]
    assert [b["data"]["percent"] for b in bodies] == [50, 80, 100]
    assert {b["period_start"] for b in bodies} == {"2026-12-01T00:00:00Z"}
    assert {b["data"]["resets_at"] for b in bodies} == {"2026-12-02T00:00:00Z"}
    assert all(b["data"]["period_ended"] and b["data"]["used"] == 120 for b in bodies)
    assert _round(db, catalog, midnight + timedelta(seconds=30)) == (0, 0)  # once only

    # Crossed inside the period (seen by a round then), it is not sent again after it.
    add_events(db, Event(datetime(2026, 12, 2, 9, tzinfo=UTC), output=60))
    assert _round(db, catalog, datetime(2026, 12, 2, 10, tzinfo=UTC)) == (1, 1)
    assert _round(db, catalog, datetime(2026, 12, 3, 0, 0, 1, tzinfo=UTC)) == (0, 0)
    assert not json.loads(receiver.received[-1][1])["data"]["period_ended"]


def _ended_at(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, end: datetime
) -> tuple[Catalog, Path]:
    """A daily hard limit of 100 alerting at 100 %, its subscription ended at ``end`` with
    100 tokens in its last second; the receiver started. (catalog, store)"""
    path = _hooks_catalog(
        tmp_path / "catalog.yaml",
        [f"http://127.0.0.1:{receiver.port}/hook"],
        HARD_DAILY,
        percents="[100]",
    )
    stamp = end.isoformat().replace("+00:00", "Z")
    path.write_text(
        path.read_text().replace(
            'start: "2026-01-01T00:00:00Z"}', f'start: "2026-01-01T00:00:00Z", end: "{stamp}"}}'
        )
    )
    db = tmp_path / "meterline.duckdb"
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    receiver.start()
    add_events(db, Event(end - timedelta(seconds=1), output=100))
    return load_catalog(path), db


def test_a_threshold_crossed_just_before_the_subscription_ended_fires_after_it(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The customer has no current period once its subscription ended: the last one is
    looked back at too."""
    end = datetime(2026, 12, 1, 12, tzinfo=UTC)
    catalog, db = _ended_at(tmp_path, receiver, monkeypatch, end)
    assert _round(db, catalog, datetime(2026, 12, 1, 12, 0, 1, tzinfo=UTC)) == (1, 1)
    (body,) = [json.loads(body) for _, body in receiver.received]
    assert (body["period_start"], body["data"]["period_ended"]) == ("2026-12-01T00:00:00Z", True)
    assert _round(db, catalog, datetime(2026, 12, 1, 12, 5, tzinfo=UTC)) == (0, 0)


def test_a_subscription_that_ended_long_ago_is_not_looked_back_at(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alerts switched on months after a subscription ended: its last period is past the
    look-back (one billing period). Before, the first round sent its crossing."""
    catalog, db = _ended_at(tmp_path, receiver, monkeypatch, datetime(2026, 6, 15, 12, tzinfo=UTC))
    assert _round(db, catalog, datetime(2026, 12, 1, 12, 0, tzinfo=UTC)) == (0, 0)
    assert _round(db, catalog, datetime(2026, 7, 1, 12, 0, tzinfo=UTC)) == (1, 1)  # in reach


def test_period_spend_crossed_just_before_the_invoice_period_ended_fires_after_it(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``period_spend_above`` evaluated only the current invoice period, too."""
    catalog = load_catalog(
        write(
            tmp_path / "catalog.yaml",
            f"""
            version: 1
            consumers: [{{name: agent-a}}]
            features:
              - {{key: out, name: Output, meter: {{token_types: [output]}}}}
            plans:
              - key: daily
                name: Daily
                currency: USD
                billing_cadence: P1D
                rate_cards:
                  - {{key: out, name: Output, feature: out, price: {{type: unit, amount: "1.00"}}}}
            customers:
              - key: acme
                name: ACME
                currency: USD
                consumers: [agent-a]
                subscriptions: [{{plan: daily, start: "2026-01-01T00:00:00Z"}}]
            alerts:
              webhooks: [{{url: "http://127.0.0.1:{receiver.port}/hook", secret_env: HOOK_SECRET}}]
              period_spend_above: ["50.00"]
            """,
        )
    )
    db = tmp_path / "meterline.duckdb"
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    receiver.start()
    add_events(db, Event(datetime(2026, 12, 1, 23, 59, 50, tzinfo=UTC), output=60))
    midnight = datetime(2026, 12, 2, tzinfo=UTC)
    assert _round(db, catalog, midnight + timedelta(milliseconds=500)) == (1, 1)
    (body,) = [json.loads(body) for _, body in receiver.received]
    assert (body["type"], body["period_start"]) == ("spend.above", "2026-12-01T00:00:00Z")
    assert (body["data"]["spent"], body["data"]["period_ended"]) == ("60.00", True)
    assert _round(db, catalog, midnight + timedelta(seconds=30)) == (0, 0)


def test_a_limit_raised_by_a_grant_fires_its_thresholds_again_once(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hard limit of 100: 120 used fires 50, 80, 100 %. 100 units granted, the proxy
    admits up to 200 and refuses again at 210; the thresholds' ids had no limit in them,
    so those of the raised limit were taken for the ones already sent: nothing fired."""
    path = _hooks_catalog(
        tmp_path / "catalog.yaml",
        [f"http://127.0.0.1:{receiver.port}/hook"],
        "[{feature: out, limit: 100}]",
        percents="[50, 80, 100]",
    )
    catalog = load_catalog(path)
    db = tmp_path / "meterline.duckdb"
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    receiver.start()
    used_at = datetime.now(UTC) - timedelta(seconds=1)
    add_events(db, Event(used_at, output=120))
    assert _round(db, catalog, datetime.now(UTC)) == (3, 3)

    assert _invoke(db, path, "credits", "grant", "--customer", "acme", "--feature", "out",
                   "--units", "100")[0] == 0  # fmt: skip
    assert _round(db, catalog, datetime.now(UTC)) == (1, 1)  # 120 of 200: its 50 %
    assert _round(db, catalog, datetime.now(UTC)) == (0, 0)  # the same limit: once
    add_events(db, Event(used_at, output=90))  # 210 of 200: the proxy refuses again
    assert _round(db, catalog, datetime.now(UTC)) == (2, 2)
    data = [json.loads(body)["data"] for _, body in receiver.received]
    assert [(d["percent"], d["limit"], d["granted_units"]) for d in data] == [
        (50, 100, 0),
        (80, 100, 0),
        (100, 100, 0),
        (50, 200, 100),
        (80, 200, 100),
        (100, 200, 100),
    ]
    assert len({h["meterline-event-id"] for h, _ in receiver.received}) == 6
    assert _round(db, catalog, datetime.now(UTC)) == (0, 0)

    # An outbox from before this fix holds a granted limit's alerts under the ids without
    # the limit: recognised (same period end and limit), not sent again.
    with billing_store(db) as con:
        events = evaluate(con, catalog, datetime.now(UTC))
        for ev in events:
            assert ev.legacy_ids and ev.data["limit"] == 200
            con.execute(
                "UPDATE alert_outbox SET event_id = ? WHERE event_id = ?",
                [ev.legacy_ids[0], ev.event_id],
            )
    assert _round(db, catalog, datetime.now(UTC)) == (0, 0)
