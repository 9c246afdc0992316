"""``billing credits ...``: grant prepaid credits and list grants with what is left."""

from __future__ import annotations

import getpass
import re
from datetime import datetime
from decimal import Decimal, InvalidOperation

import click

from billing import render
from billing.cli.common import DATETIME, INT32, NON_EMPTY, Settings, format_option, pass_settings
from billing.credits import (
    CreditError,
    Grant,
    balance,
    grant_credits,
    grant_customer,
    list_grants,
)
from billing.invoices import utc_now
from billing.money import round_money
from billing.unitgrants import grant_units, list_unit_grants

_PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


@click.group("credits")
def credits_group() -> None:
    """Prepaid credits: grants consumed by invoices (priority, then expiry)."""


@credits_group.command("grant")
@click.option("--customer", type=NON_EMPTY, required=True, help="Customer key.")
@click.option("--amount", default=None, help="Amount in the customer's currency, e.g. 50.00.")
@click.option("--feature", default=None, help="A unit grant: the feature whose units are granted.")
@click.option("--units", type=int, default=None, help="A unit grant: how many units of --feature.")
@click.option("--expires", type=DATETIME, default=None, help="When the grant expires (UTC).")
@click.option("--priority", type=INT32, default=10, show_default=True, help="Lower is used first.")
@click.option("--reason", default="", help="Why (stored with the grant).")
@pass_settings
def grant_cmd(
    settings: Settings,
    customer: str,
    amount: str | None,
    feature: str | None,
    units: int | None,
    expires: datetime | None,
    priority: int,
    reason: str,
) -> None:
    """Grant prepaid credit (an amount, or units of a feature) to a customer.

    Stored with who, when and why. Unit grants reduce that feature's billed quantity and
    raise its hard limits at the proxy.

    \b
    Example usage:
      billing credits grant --customer acme --amount 50.00 --expires 2027-01-01 --reason "pilot"
      billing credits grant --customer acme --feature gpt-tokens --units 100000 --reason "promo"
    """
    if (amount is None) == (feature is None) or (feature is None) != (units is None):
        raise CreditError("give either --amount, or --feature with --units")
    if feature is not None and units is not None:
        catalog = settings.load_catalog()
        with settings.store_for_writing(create=True) as con:
            g = grant_units(
                con, catalog, customer, feature, units,
                granted_by=getpass.getuser(), reason=reason, priority=priority, expires_at=expires,
            )  # fmt: skip
        until = f", expires {g.expires_at:%Y-%m-%dT%H:%M:%SZ}" if g.expires_at else ""
        click.echo(
            f"{g.grant_id}: {g.amount} {feature} units to {g.customer_key} "
            f"(priority {g.priority}{until})"
        )
        return
    assert amount is not None
    try:  # ASCII digits as written: Decimal() also takes '٣٠' and a trailing newline
        text = amount.strip(" \t")
        value = Decimal(text) if _PLAIN_NUMBER.fullmatch(text) else Decimal("NaN")
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite():  # NaN, Infinity: no amount at all
        raise CreditError(f"--amount {amount!r} is not a number such as 50.00")
    catalog = settings.load_catalog()
    with settings.store_for_writing(create=True) as con:
        g = grant_credits(
            con, catalog, customer, value,
            granted_by=getpass.getuser(), reason=reason, priority=priority, expires_at=expires,
        )  # fmt: skip
    until = f", expires {g.expires_at:%Y-%m-%dT%H:%M:%SZ}" if g.expires_at else ""
    click.echo(
        f"{g.grant_id}: {g.amount} {g.currency} to {g.customer_key} (priority {g.priority}{until})"
    )


@credits_group.command("list")
@click.option("--customer", type=NON_EMPTY, default=None, help="Only this customer.")
@format_option()
@pass_settings
def list_cmd(settings: Settings, customer: str | None, fmt: str) -> None:
    """List grants with what invoices left of them, and each customer's balance.

    \b
    Example usage:
      billing credits list --customer acme
    """
    with settings.store() as con:
        grants = list_grants(con, customer)
        unit_grants = list_unit_grants(con, customer)
    if customer is not None and not grants and not unit_grants:
        grant_customer(settings.load_catalog(), customer)  # a typo: one line, not "(none)"
    now = utc_now()
    money = {g.grant_id for g in grants}
    rows = [
        {
            "grant": g.grant_id,
            "customer": g.customer_key,
            "amount": g.amount,
            "remaining": _left(g.remaining if g.usable_at(now) else Decimal(0), g, money),
            "currency": g.currency if g.grant_id in money else None,
            "feature": None if g.grant_id in money else g.currency,
            "priority": g.priority,
            "expires_at": g.expires_at,
            "granted_at": g.granted_at,
            "granted_by": g.granted_by,
            "reason": g.reason,
        }
        for g in sorted([*grants, *unit_grants], key=lambda g: g.grant_id)
    ]
    click.echo(render.rows(rows, fmt))
    if fmt == "table":
        for key in sorted({g.customer_key for g in grants}):
            mine = [g for g in grants if g.customer_key == key]
            currency = mine[0].currency
            click.echo(f"{key}: balance {round_money(balance(mine, now), currency)} {currency}")
        for key, feat in sorted({(g.customer_key, g.currency) for g in unit_grants}):
            mine = [g for g in unit_grants if (g.customer_key, g.currency) == (key, feat)]
            click.echo(f"{key}: balance {balance(mine, now)} {feat} units")


def _left(amount: Decimal, grant: Grant, money: set[str]) -> Decimal:
    """What is left of a grant as shown: money in its currency's decimals, units whole."""
    return round_money(amount, grant.currency) if grant.grant_id in money else amount
