"""``billing margin``: revenue vs list-price cost per customer and model."""

from __future__ import annotations

import click

from billing import render
from billing.cli.common import MONTH, NON_EMPTY, Settings, format_option, pass_settings


@click.command("margin")
@click.option("--period", "month", type=MONTH, required=True, help="Month: YYYY-MM.")
@click.option("--customer", type=NON_EMPTY, help="Only this customer.")
@format_option()
@pass_settings
def margin_cmd(settings: Settings, month: str, customer: str | None, fmt: str) -> None:
    """Revenue of the month's invoices vs the providers' list-price cost (USD).

    Uses the invoices `billing invoice generate --period` finalized for the month.

    \b
    Example usage:
      billing margin --period 2026-03
      billing margin --period 2026-03 --format json
      billing margin --period 2026-03 --customer acme
    """
    from billing.margin import MARGIN_COLUMNS, margin_report  # genai-prices: load on use

    catalog = settings.load_catalog() if customer else None  # to name a typo as such
    with settings.store() as con:
        rows = margin_report(con, month, customer, catalog)
    click.echo(render.rows(rows, fmt, MARGIN_COLUMNS))
