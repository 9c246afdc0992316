"""``billing stripe ...``: push finalized invoices to Stripe and pull their status back.

Registered on the root CLI as ``billing stripe``; the store and the catalog are the
root's ``--db`` and ``--catalog``. Stripe settings: ``STRIPE_API_KEY`` (required to
send), ``--api-base`` / ``STRIPE_API_BASE`` (another server, e.g. a local fake).
"""

from __future__ import annotations

import re
from typing import Any

import click

from billing.cli.common import MONTH, NON_EMPTY, Settings, pass_settings
from billing.invoices import find_customer
from billing.stripe.client import (
    API_BASE_ENV,
    DEFAULT_NETWORK_RETRIES,
    StripeGateway,
    api_key_from_env,
)
from billing.stripe.status import pull_statuses
from billing.stripe.sync import Syncer, dry_run_all, sync_all
from billing.stripe.syncstate import SyncState


def _api_base(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value and not re.match(r"^https?://[^/\s]+", value):
        raise click.BadParameter(f"{value!r} is not a URL such as http://127.0.0.1:12111")
    return value


STORE_LOCK_WAITING = "waiting for the store lock held by another process…"


class _SayWaitingOnce:
    """Says :data:`STORE_LOCK_WAITING` on stderr the first time an open of the store waits
    for another process's lock (the sync opens it for every write, and each wait was
    silent for up to 30 s); the open goes on waiting."""

    def __init__(self) -> None:
        self.said = False

    def __call__(self, _why: str) -> None:
        if not self.said:
            self.said = True
            click.echo(STORE_LOCK_WAITING, err=True)


def _sync_state(settings: Settings) -> SyncState:
    return SyncState(settings.db, on_wait=_SayWaitingOnce())


def _gateway(api_base: str | None, retries: int) -> StripeGateway:
    return StripeGateway(api_key_from_env(), api_base, max_network_retries=retries)


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
@click.option("--customer", type=NON_EMPTY, help="Only invoices of this customer key.")
@click.option("--dry-run", is_flag=True, help="Print what would be sent; send nothing.")
@_stripe_options
@pass_settings
def sync_cmd(
    settings: Settings,
    period: str | None,
    customer: str | None,
    dry_run: bool,
    api_base: str | None,
    max_network_retries: int,
) -> None:
    """Send every finalized invoice not yet in Stripe: customer, items, invoice, finalize."""
    gateway = None if dry_run else _gateway(api_base, max_network_retries)
    catalog = settings.load_catalog()
    if customer is not None:
        find_customer(catalog, customer)
    sync_state = _sync_state(settings)
    invoices = sync_state.unsynced(period, customer)
    if not invoices:
        click.echo("nothing to sync: every finalized invoice is in Stripe")
        if period is not None and not sync_state.has_invoices(period, customer):
            of = f" of customer {customer}" if customer else ""
            click.echo(
                f"Note: {period} has no invoices{of} yet; "
                f"`billing invoice generate --period {period}` makes them.",
                err=True,
            )
        return
    if gateway is None:
        result = dry_run_all(invoices, catalog, sync_state, click.echo)
        click.echo(f"dry run: {len(invoices)} invoice(s), nothing sent")
    else:
        syncer = Syncer(catalog, sync_state, gateway, note=click.echo)
        result = sync_all(invoices, syncer, click.echo)
        click.echo(
            f"synced {len(result.done)} invoice(s), flagged {len(result.flagged)}"
            + (f", not sent {len(result.refused)}" if result.refused else "")
            + (f", failed {len(result.failed)}" if result.failed else "")
        )
    problem = result.problem()
    if problem:
        raise click.ClickException(problem)


@stripe_group.command("status")
@click.option(
    "--period",
    type=MONTH,
    help="Only the invoices `billing invoice generate --period` made for this month.",
)
@click.option("--customer", type=NON_EMPTY, help="Only invoices of this customer key.")
@_stripe_options
@pass_settings
def status_cmd(
    settings: Settings,
    period: str | None,
    customer: str | None,
    api_base: str | None,
    max_network_retries: int,
) -> None:
    """Pull each synced invoice's Stripe status into stripe_invoices.stripe_status."""
    gateway = _gateway(api_base, max_network_retries)
    if customer is not None:
        find_customer(settings.load_catalog(), customer)
    changes = pull_statuses(_sync_state(settings), gateway, period, customer)
    if not changes:
        click.echo("no invoice in Stripe yet: run `billing stripe sync`")
        return
    for change in changes:
        click.echo(change.line())
