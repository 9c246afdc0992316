"""The ``billing`` command line: one module per command group, logic in the package.

Global options ``--db`` and ``--catalog`` (env ``METERLINE_DB``, ``METERLINE_CATALOG``).
Exit codes: 0 ok, 1 a user error (one ``Error: ...`` line), 2 bad usage.
"""

from __future__ import annotations

import click

import billing.stripe  # noqa: F401 - registers the Stripe tables and listing column
from billing.cli.alerts import alerts_group
from billing.cli.catalog import catalog_group
from billing.cli.common import BillingGroup, Settings
from billing.cli.consumers import consumers_group
from billing.cli.credits import credits_group
from billing.cli.dashboard import dashboard_cmd, health_cmd, timeline_cmd, unbilled_cmd
from billing.cli.entitlements import entitlements_cmd
from billing.cli.invoice import invoice_group
from billing.cli.margin import margin_cmd
from billing.cli.statement import statement_cmd
from billing.cli.usage import usage_cmd
from meterline.store import DEFAULT_CATALOG, DEFAULT_DB


@click.group(cls=BillingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    envvar="METERLINE_DB",
    default=DEFAULT_DB,
    show_default=True,
    help="The store: a DuckDB file (or ducklake:...). Env: METERLINE_DB.",
)
@click.option(
    "--catalog",
    "catalog_path",
    envvar="METERLINE_CATALOG",
    default=DEFAULT_CATALOG,
    show_default=True,
    help="The catalog file. Env: METERLINE_CATALOG.",
)
@click.pass_context
def main(ctx: click.Context, db: str, catalog_path: str) -> None:
    """Meterline billing: usage, invoices and margins from the metered events.

    \b
    Example usage:
      billing catalog check
      billing usage --group-by model
      billing invoice generate --period 2026-03
    """
    ctx.obj = Settings(db=db, catalog=catalog_path)


main.add_command(catalog_group, "catalog")
main.add_command(consumers_group, "consumers")
main.add_command(usage_cmd, "usage")
main.add_command(invoice_group, "invoice")
main.add_command(margin_cmd, "margin")
main.add_command(credits_group, "credits")
main.add_command(alerts_group, "alerts")
main.add_command(entitlements_cmd, "entitlements")
main.add_command(statement_cmd, "statement")
main.add_command(timeline_cmd, "timeline")
main.add_command(health_cmd, "health")
main.add_command(unbilled_cmd, "unbilled")
main.add_command(dashboard_cmd, "dashboard")
# billing/cli/stripe.py's group, imported when `billing stripe ...` runs (see BillingGroup)
main.add_lazy_command("billing.cli.stripe:stripe_group", "stripe")
main.add_lazy_command("billing.cli.lake:lake_group", "lake")  # DuckLake upkeep
