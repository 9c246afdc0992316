"""``billing alerts ...``: evaluate thresholds, deliver signed webhooks, list, replay,
drop the rows of webhooks no longer in the catalog."""

from __future__ import annotations

import time
from datetime import timedelta

import click

from billing import render
from billing.alerts.evaluate import evaluate
from billing.alerts.outbox import Delivery, deliver, drop_orphaned, enqueue, list_alerts, replay
from billing.cli.common import DAY_S, Seconds, Settings, format_option, pass_settings
from billing.invoices import utc_now


@click.group("alerts")
def alerts_group() -> None:
    """Threshold alerts delivered as signed webhooks from a durable outbox."""


def _round(settings: Settings, min_backoff: float) -> tuple[int, Delivery]:
    catalog = settings.load_catalog()
    now = utc_now()
    with settings.store_for_writing() as con:
        added = enqueue(con, evaluate(con, catalog, now), catalog.alerts.webhooks, now)
        done = deliver(con, catalog, now, min_backoff=timedelta(seconds=min_backoff))
    return added, done


@alerts_group.command("deliver")
@click.option(
    "--min-backoff",
    type=Seconds(min=0, max=DAY_S),
    default=10.0,
    show_default=True,
    help="Seconds before the first retry of a failed delivery (doubling, at most 1 hour).",
)
@click.option(
    "--watch",
    type=Seconds(min=0.1, max=DAY_S),
    default=None,
    help="Keep running: evaluate and deliver every this many seconds.",
)
@pass_settings
def deliver_cmd(settings: Settings, min_backoff: float, watch: float | None) -> None:
    """Evaluate the thresholds, queue new alerts, post every alert that is due.

    An alert whose webhook is no longer in the catalog, or whose secret is not set, is
    skipped (one line each on stderr) and kept; the exit code is then 1.

    \b
    Example usage:
      billing alerts deliver
      billing alerts deliver --watch 30
    """
    while True:
        added, done = _round(settings, min_backoff)
        for line in done.skipped:
            click.echo(line, err=True)
        skipped = f", skipped {len(done.skipped)}" if done.skipped else ""
        click.echo(f"queued {added}, delivered {done.delivered}, failed {done.failed}{skipped}")
        if watch is None:
            if done.skipped:
                raise SystemExit(1)
            return
        time.sleep(watch)


@alerts_group.command("list")
@format_option()
@pass_settings
def list_cmd(settings: Settings, fmt: str) -> None:
    """Every alert in the outbox with its delivery state (ORPHANED: not delivered, and
    its webhook is no longer in the catalog).

    \b
    Example usage:
      billing alerts list --format json
    """
    catalog = settings.load_catalog()
    with settings.store() as con:
        click.echo(render.rows(list_alerts(con, catalog), fmt))


@alerts_group.command("replay")
@click.argument("event_id")
@pass_settings
def replay_cmd(settings: Settings, event_id: str) -> None:
    """Deliver an alert again (the same id and body; receivers deduplicate on the id).

    \b
    Example usage:
      billing alerts replay evt_5c0e8a1f2b3d4c5e6f708192
    """
    catalog = settings.load_catalog()
    with settings.store_for_writing() as con:
        n = replay(con, catalog, event_id, utc_now())
    click.echo(f"{event_id}: queued again for {n} webhook(s); run `billing alerts deliver`")


@alerts_group.command("drop-orphaned")
@pass_settings
def drop_orphaned_cmd(settings: Settings) -> None:
    """Delete the undelivered alerts of webhooks no longer in the catalog (ORPHANED in
    `billing alerts list`); kept, they are skipped each round and posted if it comes back.

    \b
    Example usage:
      billing alerts drop-orphaned
    """
    catalog = settings.load_catalog()
    with settings.store_for_writing() as con:
        n = drop_orphaned(con, catalog)
    click.echo(f"dropped {n} undelivered alert(s) of webhooks no longer in the catalog")
