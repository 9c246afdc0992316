"""``billing usage``: token usage by consumer, model, token type, day; or what is unbilled."""

from __future__ import annotations

from datetime import datetime

import click

from billing import render
from billing.cli.common import DATETIME, NON_EMPTY, Settings, format_option, pass_settings
from billing.usage import UsageError, UsageQuery, parse_group_by, usage_report


@click.command("usage")
@click.option("--customer", type=NON_EMPTY, help="Only this customer's consumers.")
@click.option("--consumer", type=NON_EMPTY, help="Only this consumer.")
@click.option("--from", "start", type=DATETIME, help="From this time (inclusive, UTC).")
@click.option("--to", "end", type=DATETIME, help="Until this time (exclusive, UTC).")
@click.option(
    "--group-by",
    "group_by",
    help="Any of: model,tier,speed,geo,type,day,refused (comma separated; tier: the "
    "service tier that served the calls; speed, geo: the speed and place they ran at; "
    "refused: by the proxy's reason).",
)
@click.option("--unbilled", is_flag=True, help="Only usage no invoice line bills, with why.")
@format_option()
@pass_settings
def usage_cmd(
    settings: Settings,
    customer: str | None,
    consumer: str | None,
    start: datetime | None,
    end: datetime | None,
    group_by: str | None,
    unbilled: bool,
    fmt: str,
) -> None:
    """Token usage per consumer, optionally per model, token type and day.

    --unbilled shows usage no invoice line bills: unknown keys (no consumer), consumers
    no customer lists, usage outside every subscription of the customer, and tokens a
    subscription covers that no usage rate card of its plan prices.

    \b
    Example usage:
      billing usage --from 2026-03-01 --to 2026-04-01 --group-by model,type
      billing usage --customer acme --group-by day --format csv
      billing usage --unbilled --group-by model
    """
    if customer and consumer:
        raise click.UsageError("give --customer or --consumer, not both")
    if start is not None and end is not None and end <= start:
        raise click.ClickException("--to must be after --from")
    try:
        dims = parse_group_by(group_by)
    except UsageError as e:
        raise click.UsageError(f"--group-by: {e}") from None
    query = UsageQuery(customer, consumer, start, end, dims, unbilled)
    catalog = settings.load_catalog()
    with settings.store() as con:
        rows = usage_report(con, catalog, query)
    click.echo(render.rows(rows, fmt))
