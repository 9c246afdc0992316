"""``billing entitlements``: the limits in force and how much of them is used."""

from __future__ import annotations

from pathlib import Path

import click

from billing import render
from billing.cli.common import NON_EMPTY, Settings, format_option, pass_settings
from billing.entitlements import entitlement_rows, read_reserved
from billing.errors import UnknownCustomer


@click.command("entitlements")
@click.option("--customer", type=NON_EMPTY, default=None, help="Only this customer.")
@click.option(
    "--proxy-state",
    "states",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A proxy's governance.json (in its spool directory) for calls in flight; repeatable.",
)
@format_option()
@pass_settings
def entitlements_cmd(
    settings: Settings, customer: str | None, states: tuple[Path, ...], fmt: str
) -> None:
    """Limit, used, reserved in flight, remaining, credit balance and reset time.

    The same figures the proxy enforces (read from the store and the catalog).

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
    with settings.store() as con:
        rows = entitlement_rows(con, catalog, customer=customer, reserved=reserved)
    click.echo(render.rows(rows, fmt))
