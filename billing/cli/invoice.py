"""``billing invoice ...``: preview, generate, list, show, explain."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import click

from billing import render
from billing.cli.common import (
    DATETIME,
    MONTH,
    NON_EMPTY,
    YEAR_S,
    Settings,
    format_option,
    pass_settings,
    progress,
)
from billing.cli.documents import emit, output_option
from billing.invoices import (
    Explanation,
    Generated,
    explain_line,
    generate_invoices,
    get_invoice,
    list_invoices,
    preview_invoice,
)
from billing.render import SHOW_FORMATS
from billing.usage import EVENT_FIELDS

DOCUMENT_FORMATS = (*SHOW_FORMATS, "pdf")


@click.group("invoice")
def invoice_group() -> None:
    """Invoices: preview live, generate (finalize) per month, list, show, explain."""


@invoice_group.command("preview")
@click.option("--customer", type=NON_EMPTY, required=True, help="Customer key from the catalog.")
@click.option("--at", type=DATETIME, help="Instant inside the period to preview (default: now).")
@format_option(DOCUMENT_FORMATS)
@output_option()
@pass_settings
def preview(
    settings: Settings, customer: str, at: datetime | None, fmt: str, output: Path | None
) -> None:
    """The invoice of the customer's current period from usage so far; stores nothing.

    \b
    Example usage:
      billing invoice preview --customer acme
      billing invoice preview --customer acme --at 2026-03-15 --format json
    """
    catalog = settings.load_catalog()
    with settings.store() as con:
        inv = preview_invoice(con, catalog, customer, at=at)
    emit(render.invoice(inv, "html" if fmt == "pdf" else fmt, catalog), fmt, output)


def generated_output(result: Generated, month: str, fmt: str) -> str:
    rows = [render.invoice_summary(i) for i in result.invoices]
    created = set(result.created)
    for r in rows:
        r["created"] = r["number"] in created
    if fmt == "json":
        return render.to_json(
            {
                "period": month,
                "created": result.created,
                "invoices": [render.invoice_json(i) for i in result.invoices],
                "pending": [
                    {"customer": p.customer.key, "period_start": p.start, "period_end": p.end}
                    for p in result.pending
                ],
            }
        )
    columns = ("number", "customer", "period_start", "period_end", "currency", "total", "created")
    if fmt == "csv":
        return render.to_csv(rows, columns)
    existing = len(result.invoices) - len(created)
    notes = [f"{len(created)} created, {existing} already existed."]
    if result.pending:
        notes.append(f"{len(result.pending)} period(s) ending in {month} have not closed yet.")
    if result.settled_after is not None:
        notes.append(
            "Some ended less than --settle ago (their last events may still be in flight): "
            f"run again after {result.settled_after:%Y-%m-%dT%H:%M:%SZ}."
        )
    return render.table(rows, columns) + "\n" + " ".join(notes)


@invoice_group.command("generate")
@click.option("--period", "month", type=MONTH, required=True, help="Month: YYYY-MM.")
@click.option("--customer", type=NON_EMPTY, help="Only this customer.")
@click.option(
    "--settle",
    type=click.IntRange(min=0, max=YEAR_S),
    default=None,
    help="Bill only usage ingested at least this many seconds ago; the rest goes on the "
    "next invoice. Default: 0 on a DuckDB file, 300 on a DuckLake (concurrent writers).",
)
@click.option(
    "--allow-empty",
    is_flag=True,
    help="Generate even when the store holds no usage events at all (invoices are final).",
)
@format_option()
@pass_settings
def generate(
    settings: Settings,
    month: str,
    customer: str | None,
    settle: int | None,
    allow_empty: bool,
    fmt: str,
) -> None:
    """Finalize the invoices of every billing period that ended in the month.

    A period ends in the month when its last instant does (month start < end <= month
    end) and it has closed (end <= now). Invoices are numbered INV-000001, ... and
    stored with their lines and prices. Idempotent: periods already invoiced are shown,
    not invoiced again. Events arriving later go on the customer's next invoice.
    Refuses to create invoices from a store with no usage events unless --allow-empty;
    names the earlier months whose closed periods were never invoiced.

    \b
    Example usage:
      billing invoice generate --period 2026-03
      billing invoice generate --period 2026-03 --customer acme --format json
    """
    catalog = settings.load_catalog()
    with settings.store_for_writing() as con:
        result = generate_invoices(
            con,
            catalog,
            month,
            customer=customer,
            settle=timedelta(seconds=settle if settle is not None else settings.default_settle),
            progress=progress("Pricing"),
            require_usage=not allow_empty,
        )
    click.echo(generated_output(result, month, fmt))
    missed = result.missed_months
    if missed:
        months = "; ".join(f"{m} ({', '.join(keys)})" for m, keys in missed.items())
        click.echo(
            f"Note: earlier months with closed periods never invoiced: {months}. "
            f"Run `billing invoice generate --period {next(iter(missed))}` (and the others).",
            err=True,
        )


@invoice_group.command("list")
@click.option("--customer", type=NON_EMPTY, help="Only this customer's invoices.")
@format_option()
@pass_settings
def list_cmd(settings: Settings, customer: str | None, fmt: str) -> None:
    """List finalized invoices with their Stripe status (empty until synced).

    \b
    Example usage:
      billing invoice list
      billing invoice list --customer acme --format csv
    """
    catalog = settings.load_catalog()
    with settings.store() as con:
        invoices = list_invoices(con, catalog, customer=customer)
    rows = [render.invoice_summary(i) for i in invoices]
    columns = render.summary_columns() if fmt == "table" else None
    click.echo(render.rows(rows, fmt, columns))


@invoice_group.command("show")
@click.argument("number")
@format_option(DOCUMENT_FORMATS)
@output_option()
@pass_settings
def show(settings: Settings, number: str, fmt: str, output: Path | None) -> None:
    """Show one invoice: lines, tiers used, total; --format html or pdf for a printable page
    (seller and due date from the catalog).

    \b
    Example usage:
      billing invoice show INV-000001
      billing invoice show INV-000001 --format html > INV-000001.html
      billing invoice show INV-000001 --format pdf -o INV-000001.pdf
    """
    catalog = settings.load_catalog()
    with settings.store() as con:
        inv = get_invoice(con, number, catalog)
    emit(render.invoice(inv, "html" if fmt == "pdf" else fmt, catalog), fmt, output)


EXPLAIN_COLUMNS = (*EVENT_FIELDS, "quantity")


def explanation_output(ex: Explanation, fmt: str) -> str:
    if fmt == "json":
        return render.to_json(
            {
                "invoice": ex.invoice.number,
                "line": render.line_row(ex.line),
                "filter": ex.line.detail["meter"],
                "consumers": ex.line.detail["consumers"],
                "windows": ex.line.detail["windows"],
                "quantity": Decimal(ex.quantity),  # a decimal string, as every quantity
                "events": [{**e, "quantity": Decimal(str(e["quantity"]))} for e in ex.events],
            }
        )
    if fmt == "csv":
        return render.to_csv(ex.events, EXPLAIN_COLUMNS)
    m = ex.line.detail["meter"]
    head = (
        f"{ex.invoice.number} line {ex.line.line_no}: {ex.line.description}\n"
        f"feature {m['feature']}: provider {m['provider'] or '*'}, model {m['model']}, "
        f"token types {', '.join(m['token_types'])}\n"
    )
    foot = f"\n{len(ex.events)} events, quantity {ex.quantity} = line quantity {ex.line.quantity}"
    return head + render.table(ex.events, EXPLAIN_COLUMNS) + foot


@invoice_group.command("explain")
@click.argument("number")
@click.argument("line", type=click.IntRange(min=1))
@format_option()
@pass_settings
def explain(settings: Settings, number: str, line: int, fmt: str) -> None:
    """The events behind one usage line: ids, provider response/request ids, tokens.

    Recomputed from the line's stored filter and windows; exits 1 if they no longer add
    up to the line's quantity.

    \b
    Example usage:
      billing invoice explain INV-000001 2
      billing invoice explain INV-000001 2 --format csv > line2.csv
    """
    with settings.store() as con:
        ex = explain_line(con, number, line)
    click.echo(explanation_output(ex, fmt))
