"""The ``billing`` command line: one module per command group, logic in the package.

Global options ``--db`` and ``--catalog`` (env ``METERLINE_DB``, ``METERLINE_CATALOG``).
Exit codes: 0 ok, 1 a user error (one ``Error: ...`` line), 2 bad usage.
"""

from __future__ import annotations

import os

import click

import billing.alerts  # noqa: F401 - registers the alert outbox table
import billing.stripe  # noqa: F401 - registers the Stripe tables and listing column
from billing.cli.common import NON_EMPTY, STORE_LOCATOR, BillingGroup, Settings
from meterline.store import DEFAULT_CATALOG, DEFAULT_DB


@click.group(cls=BillingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    envvar="METERLINE_DB",
    type=STORE_LOCATOR,
    default=DEFAULT_DB,
    show_default=True,
    help="The store: a DuckDB file (or ducklake:...). Env: METERLINE_DB.",
)
@click.option(
    "--catalog",
    "catalog_path",
    envvar="METERLINE_CATALOG",
    type=NON_EMPTY,
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
    for name in ("METERLINE_DB", "METERLINE_CATALOG"):
        # click reads an empty variable as unset, and the default file would be used
        # (a grant written to ./meterline.duckdb the proxy never reads); the proxy refuses it
        if os.environ.get(name) == "":
            raise click.UsageError(f"{name} is set but empty: unset it, or name the file")
    ctx.obj = Settings(db=db, catalog=catalog_path)


# Each command's module is imported only when that command runs (or ``--help`` lists them):
# ``billing usage`` need not import the dashboard, the alerts' webhooks or the PDF code.
for _name, _target in {
    "catalog": "billing.cli.catalog:catalog_group",
    "consumers": "billing.cli.consumers:consumers_group",
    "usage": "billing.cli.usage:usage_cmd",
    "invoice": "billing.cli.invoice:invoice_group",
    "margin": "billing.cli.margin:margin_cmd",
    "credits": "billing.cli.credits:credits_group",
    "alerts": "billing.cli.alerts:alerts_group",
    "entitlements": "billing.cli.entitlements:entitlements_cmd",
    "statement": "billing.cli.statement:statement_cmd",
    "timeline": "billing.cli.dashboard:timeline_cmd",
    "health": "billing.cli.dashboard:health_cmd",
    "unbilled": "billing.cli.dashboard:unbilled_cmd",
    "dashboard": "billing.cli.dashboard:dashboard_cmd",
    "stripe": "billing.cli.stripe:stripe_group",
    "lake": "billing.cli.lake:lake_group",  # DuckLake upkeep
}.items():
    main.add_lazy_command(_target, _name)
