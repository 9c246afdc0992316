"""``billing statement``: a customer's statement for a month (HTML, PDF or JSON)."""

from __future__ import annotations

from pathlib import Path

import click

from billing import render
from billing.cli.common import MONTH, NON_EMPTY, Settings, pass_settings
from billing.cli.documents import emit, output_option


@click.command("statement")
@click.option("--customer", type=NON_EMPTY, required=True, help="Customer key from the catalog.")
@click.option("--period", "month", type=MONTH, required=True, help="Month: YYYY-MM.")
@click.option(
    "--format", "fmt", type=click.Choice(("html", "pdf", "json")), default="html",
    show_default=True, help="Output format.",
)  # fmt: skip
@output_option()
@pass_settings
def statement_cmd(
    settings: Settings, customer: str, month: str, fmt: str, output: Path | None
) -> None:
    """The customer's statement for a month: usage per feature as charts, then the lines
    of the invoices finalized for the month (`billing invoice generate --period`).

    \b
    Example usage:
      billing statement --customer acme --period 2026-03 > acme-2026-03.html
      billing statement --customer acme --period 2026-03 --format pdf -o acme-2026-03.pdf
    """
    from billing.documents.statement import build_statement, statement_html, statement_json

    catalog = settings.load_catalog()
    with settings.store() as con:
        st = build_statement(con, catalog, customer, month)
    if fmt == "json":
        emit(render.to_json(statement_json(st)), fmt, output)
    else:
        emit(statement_html(st, catalog), fmt, output)
