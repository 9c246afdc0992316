"""``billing dashboard`` (the local web app) and the CLI twins of its charts:
``billing timeline`` (usage over time), ``billing health`` (proxy health) and
``billing unbilled`` (usage nobody pays for)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import click

from billing import render
from billing.charts import vega_bundle
from billing.cli.common import DATETIME, NON_EMPTY, Settings, pass_settings
from billing.dashboard.queries import (
    BUCKETS,
    Scope,
    health,
    resolve_range,
    timeline,
    unbilled,
)

T = TypeVar("T")


def scope_options[F](f: F) -> F:
    for opt in reversed(
        (
            click.option("--customer", type=NON_EMPTY, help="Only this customer's consumers."),
            click.option("--consumer", type=NON_EMPTY, help="Only this consumer."),
            click.option("--key", "key", help="Only this key (its sha256:... fingerprint)."),
            click.option("--from", "start", type=DATETIME, help="From (inclusive, UTC)."),
            click.option("--to", "end", type=DATETIME, help="Until (exclusive, UTC)."),
        )
    ):
        f = opt(f)  # type: ignore[type-var]
    return f


def bucket_option(default: str) -> Callable[[T], T]:
    return click.option(  # type: ignore[return-value]
        "--bucket", type=click.Choice(tuple(BUCKETS)), default=default, show_default=True,
        help="Time bucket.",
    )  # fmt: skip


@click.command("timeline")
@scope_options
@bucket_option("day")
@pass_settings
def timeline_cmd(
    settings: Settings,
    customer: str | None,
    consumer: str | None,
    key: str | None,
    start: datetime | None,
    end: datetime | None,
    bucket: str,
) -> None:
    """Tokens per hour or day, by model and by token type, as JSON (the dashboard's Usage page).

    Without --to: up to the end of the current bucket; without --from: 30 days back
    (48 hours with --bucket hour).

    \b
    Example usage:
      billing timeline --from 2026-03-01 --to 2026-04-01
      billing timeline --customer acme --bucket hour --from 2026-03-14 --to 2026-03-15
    """
    catalog = settings.load_catalog()
    rng = resolve_range(start, end, bucket, datetime.now(UTC))
    with settings.store() as con:
        data = timeline(con, catalog, Scope(customer, consumer, key), rng)
    click.echo(render.to_json(data))


@click.command("health")
@scope_options
@bucket_option("hour")
@pass_settings
def health_cmd(
    settings: Settings,
    customer: str | None,
    consumer: str | None,
    key: str | None,
    start: datetime | None,
    end: datetime | None,
    bucket: str,
) -> None:
    """Proxy health from the events, per provider, as JSON (the dashboard's Health page):
    calls and calls per minute, error share, estimated share, time-to-first-byte percentiles.

    \b
    Example usage:
      billing health --from 2026-03-14T00:00:00Z --to 2026-03-15T00:00:00Z
    """
    catalog = settings.load_catalog()
    rng = resolve_range(start, end, bucket, datetime.now(UTC))
    with settings.store() as con:
        data = health(con, catalog, Scope(customer, consumer, key), rng)
    click.echo(render.to_json(data))


@click.command("unbilled")
@click.option("--from", "start", type=DATETIME, help="From (inclusive, UTC).")
@click.option("--to", "end", type=DATETIME, help="Until (exclusive, UTC).")
@pass_settings
def unbilled_cmd(settings: Settings, start: datetime | None, end: datetime | None) -> None:
    """Usage nobody pays for, as JSON (the dashboard's Unbilled page): usage no
    subscription covers (unknown keys, unlinked consumers, outside subscriptions),
    covered usage no rate card of the plan prices, late usage no invoice will sweep, and
    usage stored behind an invoice's watermark. Default range: the last 30 days.

    \b
    Example usage:
      billing unbilled --from 2026-03-01 --to 2026-04-01
    """
    catalog = settings.load_catalog()
    rng = resolve_range(start, end, "day", datetime.now(UTC))
    with settings.store() as con:
        data = unbilled(con, catalog, rng)
    click.echo(render.to_json(data))


@click.command("dashboard")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8787, show_default=True,
              help="Port (0: any free port).")  # fmt: skip
@click.option(
    "--token",
    envvar="METERLINE_DASHBOARD_TOKEN",
    help="Required to bind anywhere but loopback; clients send it as a Bearer token or "
    "once as ?token=. Env: METERLINE_DASHBOARD_TOKEN. On the command line it shows in ps: "
    "prefer the environment or --token-file.",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read the token from this file (its first line), e.g. one made with chmod 600.",
)
@click.option(
    "--verbose",
    is_flag=True,
    help="Log every request to stderr (a page's internal error is logged, with its "
    "traceback, even without it).",
)
@pass_settings
def dashboard_cmd(
    settings: Settings,
    host: str,
    port: int,
    token: str | None,
    token_file: Path | None,
    verbose: bool,
) -> None:
    """Serve a read-only web dashboard over the store and the catalog.

    Usage over time, customers (period so far, invoices, margin), unbilled usage and
    proxy health; every page has a JSON twin (add .json to the path). Safe to run while
    proxies write: the store is opened read-only for each request.

    \b
    Example usage:
      billing dashboard
      billing --db ducklake:postgres:dbname=meterline dashboard --port 9000
      openssl rand -hex 16 > ~/.dashboard-token && chmod 600 ~/.dashboard-token
      billing dashboard --host 0.0.0.0 --token-file ~/.dashboard-token
    """
    from billing.dashboard.app import Dashboard
    from billing.dashboard.server import DashboardError, DashboardServer, check_binding, check_token

    if token_file is not None:
        if token is not None:
            raise click.UsageError("give --token (or METERLINE_DASHBOARD_TOKEN) or --token-file")
        token = _read_token(token_file)
    try:
        if token is not None:
            check_token(token)
        check_binding(host, token)
    except DashboardError as e:
        raise click.ClickException(str(e)) from None
    # Bind first: a port in use is said at once, before the store (which may wait 30 s
    # for another process's lock, saying so after 2 s) and the chart bundle's thread
    # (seconds of the GIL); listen only once the store is ready: connections are refused
    # meanwhile, not left unanswered
    app = Dashboard(settings.db, settings.catalog)
    try:
        server = DashboardServer((host, port), app, token=token, verbose=verbose)
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror}") from None
    try:
        settings.load_catalog()  # a broken catalog is reported now, not on the first page
        with settings.store():  # a Meterline store, its tables up to date (see the reader)
            pass
        server.listen()
        threading.Thread(target=vega_bundle, daemon=True).start()  # seconds, before a page
        shown = f"[{host}]" if ":" in host else host
        click.echo(f"Serving on http://{shown}:{server.server_address[1]}/ (Ctrl-C to stop)")
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _read_token(path: Path) -> str:
    """The first line of ``path``, stripped; a one-line error for a missing or empty file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise click.ClickException(f"--token-file {path}: {e.strerror}") from None
    token = text.splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise click.ClickException(f"--token-file {path}: the file holds no token")
    return token
