"""``billing stripe ...``: push finalized invoices to Stripe and pull their status back.

Registered on the root CLI as ``billing stripe``; the store and the catalog are the
root's ``--db`` and ``--catalog``. Stripe settings: ``STRIPE_API_KEY`` (required to
send), ``--api-base`` / ``STRIPE_API_BASE`` (another server, e.g. a local fake).
"""

from __future__ import annotations

import re
from typing import Any

import click

from billing.cli.common import MONTH, Settings
from billing.stripe.amounts import AmountError
from billing.stripe.client import (
    API_BASE_ENV,
    DEFAULT_NETWORK_RETRIES,
    StripeFailure,
    StripeGateway,
    api_key_from_env,
)
from billing.stripe.ledger import Ledger
from billing.stripe.status import pull_statuses
from billing.stripe.sync import Syncer, SyncError, dry_run_plan, sync_all
from meterline.catalog import Catalog, CatalogError, load_catalog
from meterline.store import DEFAULT_CATALOG, DEFAULT_DB, StoreError


def _api_base(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value and not re.match(r"^https?://[^/\s]+", value):
        raise click.BadParameter(f"{value!r} is not a URL such as http://127.0.0.1:12111")
    return value


class _Env:
    """Where a command reads from: the root's ``--db`` and ``--catalog`` (``Settings``)."""

    def __init__(self, ctx: click.Context) -> None:
        settings = ctx.find_object(Settings)
        self.db = settings.db if settings else DEFAULT_DB
        self.catalog_path = settings.catalog if settings else DEFAULT_CATALOG

    def catalog(self) -> Catalog:
        try:
            return load_catalog(self.catalog_path)
        except CatalogError as e:
            raise click.ClickException(str(e)) from None

    def ledger(self) -> Ledger:
        return Ledger(self.db)


def _gateway(api_base: str | None, retries: int) -> StripeGateway:
    try:
        key = api_key_from_env()
    except StripeFailure as e:
        raise click.ClickException(str(e)) from None
    return StripeGateway(key, api_base, max_network_retries=retries)


def _stripe_options(fn: Any) -> Any:
    fn = click.option(
        "--max-network-retries",
        type=click.IntRange(0, 10),
        default=DEFAULT_NETWORK_RETRIES,
        show_default=True,
        help="Retries of a call that got no answer (same idempotency key).",
    )(fn)
    return click.option(
        "--api-base",
        envvar=API_BASE_ENV,
        callback=_api_base,
        help=f"Stripe API base URL (env {API_BASE_ENV}); default https://api.stripe.com.",
    )(fn)


@click.group("stripe")
def stripe_group() -> None:
    """Sync finalized invoices to Stripe (exactly once) and pull their status.

    \b
    Example usage:
      export STRIPE_API_KEY=sk_test_...
      billing stripe sync --period 2026-10 --dry-run
      billing stripe sync --period 2026-10
      billing stripe status
    """


@stripe_group.command("sync")
@click.option(
    "--period",
    type=MONTH,
    help="Only the invoices `billing invoice generate --period` made for this month.",
)
@click.option("--customer", help="Only invoices of this customer key.")
@click.option("--dry-run", is_flag=True, help="Print what would be sent; send nothing.")
@_stripe_options
@click.pass_context
def sync_cmd(
    ctx: click.Context,
    period: str | None,
    customer: str | None,
    dry_run: bool,
    api_base: str | None,
    max_network_retries: int,
) -> None:
    """Send every finalized invoice not yet in Stripe: customer, items, invoice, finalize."""
    env = _Env(ctx)
    gateway = None if dry_run else _gateway(api_base, max_network_retries)
    catalog = env.catalog()
    ledger = env.ledger()
    try:
        invoices = ledger.unsynced(period, customer)
        if not invoices:
            click.echo("nothing to sync: every finalized invoice is in Stripe")
            return
        if gateway is None:
            for invoice in invoices:
                for line in dry_run_plan(invoice, catalog, ledger):
                    click.echo(line)
            click.echo(f"dry run: {len(invoices)} invoice(s), nothing sent")
            return
        done, flagged = sync_all(invoices, Syncer(catalog, ledger, gateway), click.echo)
    except (SyncError, AmountError, StoreError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"synced {len(done)} invoice(s), flagged {len(flagged)}")
    if flagged:
        numbers = ", ".join(o.number for o in flagged)
        raise click.ClickException(
            f"{len(flagged)} invoice(s) flagged, not finalized: {numbers}; "
            "see `billing stripe status`"
        )


@stripe_group.command("status")
@click.option(
    "--period",
    type=MONTH,
    help="Only the invoices `billing invoice generate --period` made for this month.",
)
@click.option("--customer", help="Only invoices of this customer key.")
@_stripe_options
@click.pass_context
def status_cmd(
    ctx: click.Context,
    period: str | None,
    customer: str | None,
    api_base: str | None,
    max_network_retries: int,
) -> None:
    """Pull each synced invoice's Stripe status into stripe_invoices.stripe_status."""
    env = _Env(ctx)
    gateway = _gateway(api_base, max_network_retries)
    ledger = env.ledger()
    try:
        changes = pull_statuses(ledger, gateway, period, customer)
    except (StripeFailure, StoreError) as e:
        raise click.ClickException(str(e)) from None
    if not changes:
        click.echo("no invoice in Stripe yet: run `billing stripe sync`")
        return
    for change in changes:
        click.echo(change.line())
