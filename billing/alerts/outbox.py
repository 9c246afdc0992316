"""The durable outbox: alert events stay in ``alert_outbox`` until a webhook says 2xx.

:func:`enqueue` inserts each (event, webhook) once: an event id already there is left
alone, so re-evaluating never fires a threshold twice in a period. :func:`deliver`
posts every row that is due, oldest first (the events of one evaluation in the order it
found them: thresholds ascending); a failure is recorded and the row retried at
``now + backoff`` (``min_backoff * 2**attempts``, at most an hour). Each post is signed
with the time it is sent: a slow receiver or a backlog would otherwise receive posts
signed minutes earlier, which the documented check (300 s) rejects.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from billing.alerts.evaluate import AlertEvent
from billing.alerts.webhook import post
from billing.errors import UserError
from meterline.catalog import Catalog, Webhook

MAX_BACKOFF = timedelta(hours=1)


class AlertError(UserError, ValueError):
    """An alert command that cannot run (an unknown event)."""


def _db(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def payload(ev: AlertEvent, created: datetime) -> str:
    return json.dumps(
        {
            "id": ev.event_id,
            "type": ev.kind,
            "created": _iso(created),
            "customer": ev.customer_key,
            "period_start": _iso(ev.period_start),
            "data": ev.data,
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def enqueue(
    con: duckdb.DuckDBPyConnection,
    events: Sequence[AlertEvent],
    webhooks: Sequence[Webhook],
    now: datetime,
) -> int:
    """Add the events not yet in the outbox; returns how many rows were added."""
    have = {
        (r[0], r[1])
        for r in con.execute("SELECT event_id, webhook_url FROM alert_outbox").fetchall()
    }
    have_as_legacy = _queued_under_legacy_ids(con, events)
    # created_at steps by a microsecond per event: delivery (ordered by it) keeps the
    # evaluation's order, e.g. 50 % before 80 % before 100 %, not the ids' hash order.
    rows = [
        (ev.event_id, hook.url, ev.customer_key, ev.kind, _db(ev.period_start),
         payload(ev, now), _db(now + timedelta(microseconds=n)), 0, _db(now), None, None)
        for n, ev in enumerate(events)
        for hook in webhooks
        if (ev.event_id, hook.url) not in have
        and not any(
            (legacy, hook.url, ev.data.get("resets_at"), ev.data.get("limit")) in have_as_legacy
            for legacy in ev.legacy_ids
        )
    ]  # fmt: skip
    if rows:
        con.executemany("INSERT INTO alert_outbox VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return len(rows)


def _queued_under_legacy_ids(
    con: duckdb.DuckDBPyConnection, events: Sequence[AlertEvent]
) -> set[tuple[str, str, str | None, int | None]]:
    """(former id, webhook, period end, limit) of the rows queued under an event's former
    ids.

    A former id was shared by every limit of the feature whose period started at the same
    instant, and by every limit a grant or override set in the period; the period's end
    and the limit in the row's payload tell which crossing it was.
    """
    legacy = sorted({former for ev in events for former in ev.legacy_ids})
    if not legacy:
        return set()
    rows = con.execute(
        "SELECT event_id, webhook_url, payload FROM alert_outbox WHERE list_contains(?, event_id)",
        [legacy],
    ).fetchall()
    out: set[tuple[str, str, str | None, int | None]] = set()
    for former, url, body in rows:
        data = json.loads(body)["data"]
        out.add((former, url, data.get("resets_at"), data.get("limit")))
    return out


def retry_wait(min_backoff: timedelta, attempts: int) -> timedelta:
    """``min_backoff * 2**attempts``, at most :data:`MAX_BACKOFF`, for any ``attempts``.

    Computed in whole microseconds (Python ints do not overflow): a ``timedelta``
    overflows long before the cap applies (about 31 attempts at an hour, 43 at 10 s),
    which crashed every delivery round from then on, with the row never updated.
    """
    micro = timedelta(microseconds=1)
    return min(min_backoff // micro * 2**attempts, MAX_BACKOFF // micro) * micro


def _secret(catalog: Catalog, url: str) -> bytes | str:
    """The webhook's secret, or why its rows cannot be posted now (one line).

    Both are states of the catalog or the environment, not of the receiver: such a row
    is skipped, not failed (no attempt counted), and posted once the webhook is back.
    """
    for hook in catalog.alerts.webhooks:
        if hook.url == url:
            value = os.environ.get(hook.secret_env)
            if not value:
                return f"environment variable {hook.secret_env} is not set"
            return value.encode()
    return "the webhook is no longer in the catalog"


@dataclass
class Delivery:
    delivered: int = 0
    failed: int = 0
    skipped: list[str] = field(default_factory=list)
    """One line per row not posted: its event, webhook and why."""


def deliver(
    con: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    now: datetime,
    *,
    min_backoff: timedelta = timedelta(seconds=10),
) -> Delivery:
    """Post every due row. A row whose webhook left the catalog, or whose secret is not
    set, is skipped and reported, and stays in the outbox: it used to abort the round,
    so one stale row blocked every other webhook for good."""
    due = con.execute(
        "SELECT event_id, webhook_url, payload, attempts FROM alert_outbox "
        "WHERE delivered_at IS NULL AND next_attempt_at <= ? ORDER BY created_at, event_id",
        [_db(now)],
    ).fetchall()
    result = Delivery()
    for event_id, url, body, attempts in due:
        secret = _secret(catalog, url)
        if isinstance(secret, str):
            result.skipped.append(f"{event_id} to {url}: not sent, {secret}")
            continue
        error = post(url, body.encode(), event_id, secret, int(time.time()))
        if error is None:
            con.execute(
                "UPDATE alert_outbox SET delivered_at = ?, attempts = attempts + 1, "
                "last_error = NULL WHERE event_id = ? AND webhook_url = ?",
                [_db(now), event_id, url],
            )
            result.delivered += 1
        else:
            wait = retry_wait(min_backoff, attempts)
            con.execute(
                "UPDATE alert_outbox SET attempts = attempts + 1, next_attempt_at = ?, "
                "last_error = ? WHERE event_id = ? AND webhook_url = ?",
                [_db(now + wait), error, event_id, url],
            )
            result.failed += 1
    return result


def list_alerts(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> list[dict[str, Any]]:
    """Every outbox row; ``orphaned`` marks one not delivered whose webhook is no longer
    in the catalog (skipped by :func:`deliver`, removed by :func:`drop_orphaned`)."""
    cur = con.execute(
        "SELECT event_id, customer_key, kind, period_start, webhook_url, attempts, "
        "delivered_at, next_attempt_at, last_error FROM alert_outbox ORDER BY created_at, event_id"
    )
    names = [d[0] for d in cur.description]
    urls = {hook.url for hook in catalog.alerts.webhooks}
    rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    for row in rows:
        row["orphaned"] = row["delivered_at"] is None and row["webhook_url"] not in urls
    return rows


def drop_orphaned(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> int:
    """Delete the undelivered rows of webhooks no longer in the catalog; returns how many."""
    urls = [hook.url for hook in catalog.alerts.webhooks]
    orphaned = "delivered_at IS NULL AND NOT list_contains(?, webhook_url)"
    found = con.execute(f"SELECT count(*) FROM alert_outbox WHERE {orphaned}", [urls]).fetchone()
    con.execute(f"DELETE FROM alert_outbox WHERE {orphaned}", [urls])  # noqa: S608 - constant
    return int(found[0]) if found else 0


def replay(con: duckdb.DuckDBPyConnection, catalog: Catalog, event_id: str, now: datetime) -> int:
    """Queue a delivered (or failing) event again, at once, to the catalog's webhooks
    (not to one no longer there, which would only be skipped); returns the rows queued."""
    found = con.execute(
        "SELECT count(*) FROM alert_outbox WHERE event_id = ?", [event_id]
    ).fetchone()
    if not found or not found[0]:
        raise AlertError(f"no alert {event_id!r}")
    urls = [hook.url for hook in catalog.alerts.webhooks]
    queued = con.execute(
        "UPDATE alert_outbox SET delivered_at = NULL, next_attempt_at = ? "
        "WHERE event_id = ? AND list_contains(?, webhook_url)",
        [_db(now), event_id, urls],
    ).fetchone()
    return int(queued[0]) if queued else 0
