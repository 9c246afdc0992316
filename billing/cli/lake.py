"""``billing lake maintain``: one maintenance pass on a DuckLake (for cron, or by hand);
``billing lake repair``: files the lake names that its storage lost."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import duckdb

from billing import render
from billing.cli.common import YEAR_S, Settings, format_option, pass_settings
from billing.ledger import restore_invoice_sequence
from meterline import lakerepair, lakestage, lakestorage
from meterline.conninfo import shown
from meterline.lakelease import give_back_lease, lease_holder, restore_lease_row, take_lease
from meterline.lakemaint import DEFAULT_KEEP, ORPHAN_AGE, maintain
from meterline.store import LAKE_PREFIX, StoreError, store


@click.group("lake")
def lake_group() -> None:
    """Upkeep of a DuckLake store (a fleet of proxies)."""


@lake_group.command("maintain")
@click.option(
    "--keep",
    type=click.IntRange(min=1, max=10 * YEAR_S),
    default=int(DEFAULT_KEEP.total_seconds()),
    show_default=True,
    help="Seconds of snapshots (and of freed files) kept for readers still running.",
)
@click.option(
    "--flush-inlined",
    is_flag=True,
    help="Also move rows inlined in the catalog to Parquet files. Only with every proxy "
    "stopped: DuckLake 0.3 duplicates rows committed meanwhile.",
)
@click.option(
    "--delete-orphans",
    is_flag=True,
    help="Also delete Parquet files under the lake's data path that the lake does not name "
    "and that are over a day old (left by writers killed mid-flush). Only for a data path "
    "no other lake uses.",
)
@click.option(
    "--break-lease",
    is_flag=True,
    help="Take the maintenance lease even from a holder that has not let it lapse: only "
    "when that holder is known to be gone (killed mid-pass). Says whose lease it broke.",
)
@format_option()
@pass_settings
def maintain_cmd(
    settings: Settings,
    keep: int,
    flush_inlined: bool,
    delete_orphans: bool,
    break_lease: bool,
    fmt: str,
) -> None:
    """Compact the lake's files, expire old snapshots, delete the files they freed.

    Takes the lake's maintenance lease first, so it never runs twice at once (a proxy's
    own pass included); exits with an error when another holder has it. Before that, like
    a proxy's pass, it checks the data path is the lake's storage from here (its marker,
    else the lake's newest files) and refuses otherwise: the lease and the merges write
    files. Invoices are unchanged by it: rows move between files, none is changed.

    \b
    Example usage:
      billing --db "$LAKE" lake maintain
      */10 * * * *  billing --db "$LAKE" lake maintain --format json
    """
    if not settings.db.startswith(LAKE_PREFIX):
        raise StoreError(
            f"{shown(settings.db)}: not a DuckLake (lake maintain is for ducklake:...)"
        )
    holder = f"billing:{socket.gethostname()}:{os.getpid()}"
    with store(settings.db, create_lake=False) as con:
        try:  # the proxies' passes check the same, and refuse with the same line
            lakerepair.check_storage(con)
        except lakestorage.StorageUnreachable as e:
            raise click.ClickException(str(e)) from None
        stale = _held_lease(con) if break_lease else None
        if not take_lease(con, holder, take_over=stale[0] if stale else None):
            who, until = lease_holder(con)
            raise StoreError(
                f"another maintenance pass holds the lake's lease ({who or 'unknown'}, until "
                f"{until:%Y-%m-%dT%H:%M:%SZ}: a holder that died or lost PostgreSQL lets it lapse "
                "then); try later, or --break-lease once that holder is known to be gone"
            )
        if stale:
            click.echo(
                f"broke the lake's maintenance lease held by {stale[0]} (until "
                f"{stale[1]:%Y-%m-%dT%H:%M:%SZ})",
                err=True,
            )
        try:
            _move_staged(con, settings.db)
            report = maintain(
                con,
                keep=timedelta(seconds=keep),
                flush_inlined=flush_inlined,
                orphan_age=ORPHAN_AGE if delete_orphans else None,
            )
        finally:
            if not give_back_lease(con, settings.db, holder):
                click.echo(
                    "Warning: the lake's maintenance lease could not be given back "
                    "(PostgreSQL unreachable): it lapses at its expiry",
                    err=True,
                )
    click.echo(render.rows([asdict(report)], fmt))


def _move_staged(con: duckdb.DuckDBPyConnection, locator: str) -> None:
    """On a lake that stages (``METERLINE_LAKE_INGEST=staged``): the staged lines go into
    the lake before it is compacted, as a proxy's mover would (a fleet whose proxies are
    all stopped leaves them staged; billing counts them either way)."""
    if not lakestage.stages(con):
        return
    with (
        contextlib.closing(lakestage.connect(locator)) as pg,
        tempfile.TemporaryDirectory(prefix="meterline-move-") as work,
    ):
        moved = lakestage.move(con, pg, Path(work))
        lakestage.forget(con, pg)
    click.echo(f"moved {moved} staged event(s) into the lake", err=True)


def _held_lease(con: duckdb.DuckDBPyConnection) -> tuple[str, datetime] | None:
    """The maintenance lease's holder and expiry while it is held; None when it is free."""
    try:
        who, until = lease_holder(con)
    except duckdb.CatalogException:  # no lease table yet: taking the lease makes it
        return None
    return (who, until) if who and until > datetime.now(UTC) else None


@lake_group.command("repair")
@click.option(
    "--drop",
    is_flag=True,
    help="Remove the dangling files from the lake's catalog (what they held is gone).",
)
@click.option(
    "--force",
    is_flag=True,
    help="With --drop: drop even when the data path does not look like the lake's storage "
    "(no marker, none of its files) or every file (of the lake, or of a table) is missing. "
    "Only once the storage is known to be the right one and the files gone for good.",
)
@pass_settings
def lake_repair(settings: Settings, drop: bool, force: bool) -> None:
    """List the data files the lake names but its storage no longer has; --drop them.

    Every read of a table with such a file fails. A proxy repairs the one case it can
    tell apart itself (its own commit whose acknowledgement was lost: DuckLake deleted
    the file of a commit that went in), and writes that batch again from its spool.
    Files lost any other way (a lifecycle rule, a commit of billing's) are listed
    here; --drop removes them from the catalog so the rest of the lake can be read:
    their rows are lost unless restored from a backup. Exits 1 when files are dangling
    and --drop was not given.

    Nothing is listed or dropped when the data path is not the lake's storage from this
    host (a disk not mounted, another S3 endpoint, a missing bucket), and --drop refuses
    when every file, or every file of a table, is missing: that is storage to check, not
    files to drop (--force drops them anyway).

    \b
    Example usage:
      billing --db "$LAKE" lake repair
      billing --db "$LAKE" lake repair --drop
    """
    if not settings.db.startswith(LAKE_PREFIX):
        raise StoreError(f"{shown(settings.db)}: not a DuckLake (lake repair is for ducklake:...)")
    with store(settings.db, create_lake=False) as con:
        try:
            dangling = lakerepair.dangling_files(con, check=not force)
        except lakerepair.StorageUnreachable as e:
            raise click.ClickException(f"{e}; nothing listed or dropped") from None
        for f in dangling:
            at = datetime.fromtimestamp(f.committed_at, UTC)
            what = "rows" if f.kind == "data" else "rows deleted"
            click.echo(
                f"{f.table}\t{f.record_count} {what}\tcommitted {at:%Y-%m-%dT%H:%M:%SZ}\t{f.path}"
            )
        rows = sum(f.record_count for f in dangling if f.kind == "data")
        wholesale = None if force else lakerepair.wholesale_loss(con, dangling)
        if not dangling:
            click.echo("no dangling files: every file the lake names is in its storage")
        elif wholesale is not None:
            root = lakerepair.data_path(con)
            raise click.ClickException(
                f"{wholesale}: check the storage before dropping anything "
                f"({lakestorage.where_to_look(root)}); nothing dropped. If the files are "
                "gone for good: --drop --force"
            )
        elif drop:
            _drop(con, dangling, rows)
        else:
            raise click.ClickException(
                f"{len(dangling)} dangling file(s), {rows} rows: run again with --drop to "
                "remove them from the catalog"
            )


def _drop(con: duckdb.DuckDBPyConnection, dangling: list[lakerepair.LakeFile], rows: int) -> None:
    lakerepair.drop_files(con, dangling)
    click.echo(f"dropped {len(dangling)} file(s), {rows} rows, from the lake's catalog")
    tables = {f.table for f in dangling}
    if "main.invoice_sequence" in tables and restore_invoice_sequence(con):
        click.echo("restored the invoice_sequence row (from the stored invoices)")
    if "main.lake_leases" in tables and restore_lease_row(con):
        click.echo("restored the maintenance lease row (free)")
