"""``billing entitlements``: the limits in force and how much of them is used."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click
import duckdb

from billing import render
from billing.cli.common import NON_EMPTY, Settings, format_option, pass_settings
from billing.entitlements import entitlement_rows, read_reserved
from billing.errors import UnknownCustomer
from meterline.catalog import Catalog
from meterline.entitlements import build_policy, fleet
from meterline.entitlements.policy import active_subscription
from meterline.lakerepair import metadata_alias


@click.command("entitlements")
@click.option("--customer", type=NON_EMPTY, default=None, help="Only this customer.")
@click.option(
    "--proxy-state",
    "states",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A proxy's governance.json (in its spool directory) for calls in flight; repeatable. "
    "On a fleet's lake (PostgreSQL) they are read from the proxies' shared table instead.",
)
@format_option()
@pass_settings
def entitlements_cmd(
    settings: Settings, customer: str | None, states: tuple[Path, ...], fmt: str
) -> None:
    """Limit, used, reserved in flight, remaining, credit balance and reset time.

    The same figures the proxy enforces (read from the store and the catalog). Calls in
    flight come from --proxy-state files, or on a fleet's lake (PostgreSQL) from the
    table its proxies share. For a --customer with no active subscription, a line on
    stderr says so and since when.

    \b
    Example usage:
      billing entitlements --customer acme
      billing entitlements --format json --proxy-state meterline-spool/governance.json
    """
    catalog = settings.load_catalog()
    if customer and all(c.key != customer for c in catalog.customers):
        raise UnknownCustomer(catalog, customer)
    reserved, warnings = read_reserved(states)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    now = datetime.now(UTC)
    with settings.store() as con:
        if not states:  # a fleet's lake: its proxies share their calls in flight
            try:
                reserved = fleet.reserved_by_counter(con, metadata_alias()) or reserved
            except duckdb.Error as e:  # its role may not read the proxies' table
                click.echo(
                    f"warning: cannot read the fleet's calls in flight ({fleet.TABLE}: "
                    f"{fleet.reason(e)}); RESERVED leaves them out",
                    err=True,
                )
        rows = entitlement_rows(con, catalog, customer=customer, now=now, reserved=reserved)
    click.echo(render.rows(rows, fmt))
    inactive = _no_active_subscription(catalog, customer, now) if customer else None
    if inactive:
        click.echo(inactive, err=True)


def _no_active_subscription(catalog: Catalog, key: str, now: datetime) -> str | None:
    """Why the customer has no limits in force now, when it has no active subscription:
    its report alone (``(none)``) did not say why the proxy refused all its calls."""
    customer = catalog.customer(key)
    if active_subscription(customer, now) is not None:
        return None
    ended = [s for s in customer.subscriptions if s.end is not None and s.end <= now]
    later = [s for s in customer.subscriptions if s.start > now]
    if ended:
        last = max(ended, key=lambda s: s.start)
        line = (
            f"{key}: no active subscription since {last.end:%Y-%m-%dT%H:%M:%SZ} "
            f"(its subscription to plan {last.plan!r} ended then)"
        )
    else:
        line = f"{key}: no active subscription"
    if later:
        first = min(later, key=lambda s: s.start)
        line += f"; the next starts at {first.start:%Y-%m-%dT%H:%M:%SZ} (plan {first.plan!r})"
    pol = build_policy(catalog, now).by_customer.get(key)
    if pol is not None and pol.inactive:
        line += "; the proxy refuses its calls (403)"
    return line
