"""What every command shares: settings from the global options, option types, errors.

Commands stay thin: parse options, open the catalog and the store, call one function of
the ``billing`` package, render its result. Errors a user can fix (a bad catalog, an
unknown customer, a missing database) become ``click.ClickException``: one
``Error: ...`` line and exit code 1; malformed options are usage errors (exit code 2).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import click
import duckdb

from billing.errors import NotGenerated, NoUsage, UserError
from billing.instants import OUT_OF_RANGE, in_utc
from billing.render import FORMATS
from billing.store import billing_reader, billing_store
from meterline import catalogconn, lakerepair
from meterline.catalog import Catalog, CatalogError, load_catalog
from meterline.conninfo import locator_problem, one_line, shown
from meterline.emptystore import is_empty_file
from meterline.periods import PeriodRangeError, calendar_month
from meterline.store import LAKE_PREFIX, StoreError, io_hint, no_store_yet, store

USER_ERRORS: tuple[type[Exception], ...] = (UserError, CatalogError, StoreError, PeriodRangeError)
"""Mapped once, here, to ``Error: ...`` and exit 1: billing's own base and the two
user errors of the shared core (a bad catalog, a store that cannot be opened)."""

T = TypeVar("T")


class NonEmpty(click.ParamType):
    """A name that must say something: ``--customer ""`` meant "every customer" to the
    code behind it (``invoice generate`` finalized every customer's invoices), and
    ``--db ""`` DuckDB's in-memory database (a grant "stored" nowhere), and ``--catalog ""``
    the current directory (``.: cannot read: Is a directory``)."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if not text.strip():
            self.fail("must not be empty", param, ctx)
        return text


NON_EMPTY = NonEmpty()


class StoreLocator(NonEmpty):
    """``--db``: a DuckDB file or a ``ducklake:...`` lake, never a bare PostgreSQL
    connection string (DuckDB made a file named after it, and errors repeated its
    password): refused in one line naming the ``ducklake:postgres:...`` form."""

    name = "store"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = super().convert(value, param, ctx)
        problem = locator_problem(text)
        if problem is not None:
            self.fail(problem, param, ctx)
        return text


STORE_LOCATOR = StoreLocator()

DAY_S = 86_400
YEAR_S = 366 * DAY_S


class Seconds(click.FloatRange):
    """A finite number of seconds in ``[min, max]``: ``click.FloatRange`` lets ``nan``
    through (every comparison with it is false), and ``inf`` or a huge value overflowed
    later (``time.sleep``, ``timedelta``) into a traceback."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if number != number:  # NaN
            self.fail("not a number", param, ctx)
        return number


INT32 = click.IntRange(-(2**31), 2**31 - 1)
"""An integer the store keeps in an ``INTEGER`` column (a grant's priority)."""


@dataclass(frozen=True)
class Settings:
    """The root's options; ``billing stripe`` reads ``db`` and ``catalog`` from it too."""

    db: str
    catalog: str
    """Path of the catalog file."""

    def load_catalog(self) -> Catalog:
        return load_catalog(self.catalog)

    @property
    def default_settle(self) -> int:
        """Seconds ``invoice generate`` leaves in-flight batches to settle (see --settle)."""
        return 300 if self.db.startswith(LAKE_PREFIX) else 0

    def store(self) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        """The store opened read-only, for a command that only reads (never changed; see
        :func:`billing.store.billing_reader`)."""
        return billing_reader(self.db, on_wait=_say_waiting, on_newer=_warn_newer)

    @contextmanager
    def store_for_writing(self, *, create: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """The store opened writable and migrated, for a command that writes.

        ``create``: a DuckDB file is made if there is none yet (a grant may come before
        the proxy's first event; a lake is never made here: a fleet's lake is the
        proxies'). Said on stderr, naming the path: a mistyped ``--db`` would otherwise
        put the grant in a store nothing reads."""
        new_file = create and not self.db.startswith(LAKE_PREFIX) and no_store_yet(self.db)
        was = "was an empty file" if new_file and is_empty_file(self.db) else "did not exist"
        with billing_store(self.db, create=new_file, on_wait=_say_waiting) as con:
            if new_file:
                click.echo(
                    f"Note: {shown(self.db)} {was}: created a new, empty store "
                    "(point the proxy's meter_db at it)",
                    err=True,
                )
            yield con


def _warn_newer(warning: str) -> None:
    """Read from a store a newer Meterline migrated: said once per command, however many
    times it opens the store (remembered in the command's root context)."""
    ctx = click.get_current_context(silent=True)
    warned: set[str] = set() if ctx is None else ctx.find_root().meta.setdefault(_WARNED, set())
    if warning not in warned:
        warned.add(warning)
        click.echo(f"Warning: {warning}", err=True)


_WARNED = "billing.newer_store_warned"


def _say_waiting(why: str) -> None:
    """A command waiting for another process's lock on the store says so (it sat silent
    for up to 30 s, then failed)."""
    click.echo(f"waiting for the store: {why}", err=True)


pass_settings = click.make_pass_decorator(Settings)


class BillingGroup(click.Group):
    """A group that turns the package's user errors into ``Error: ...`` and exit code 1.

    Groups registered with :meth:`add_lazy_command` are imported only when used (or
    listed by ``--help``): the Stripe SDK alone adds 0.13 s to every command's start-up.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, str] = {}

    def add_lazy_command(self, target: str, name: str) -> None:
        """``target`` is ``"package.module:attribute"``."""
        self.lazy[name] = target

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            module, attr = self.lazy[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as e:
            hint = cli_hint(e)
            raise click.ClickException(shown(f"{e}; {hint}" if hint else str(e))) from None
        except duckdb.Error as e:
            text = str(e)
            if catalogconn.lost_connection(text):  # any class: see meterline.catalogconn
                raise click.ClickException(f"{one_line(text)} ({catalogconn.HINT})") from None
            if not isinstance(e, (duckdb.IOException, duckdb.HTTPException)):
                raise  # a bug, not the store: its traceback is what to report
            # The store's disk or the lake's object storage, met after the store opened.
            storage = _storage_problem(ctx.find_object(Settings), text)
            why = f"cannot read the store: {one_line(text)}{io_hint(text, storage)}"
            raise click.ClickException(why) from None


def _storage_problem(settings: Settings | None, error: str) -> str | None:
    """After a read found a lake file missing: why the lake's data path is not its
    storage from here (a disk not mounted, another endpoint), or None (a file is lost)."""
    if settings is None or not lakerepair.names_a_lost_file(error):
        return None
    try:
        with store(settings.db, read_only=True, create_lake=False) as con:
            lakerepair.check_storage(con)
    except lakerepair.StorageUnreachable as e:
        return str(e)
    except (StoreError, duckdb.Error):
        return None
    return None


def cli_hint(error: Exception) -> str | None:
    """The command that fixes a domain error (domain messages never name CLI flags)."""
    if isinstance(error, NoUsage):
        return "pass --allow-empty to generate them anyway"
    if isinstance(error, NotGenerated):
        return f"run `billing invoice generate --period {error.month}` first"
    return None


class Month(click.ParamType):
    """``YYYY-MM``; passed on as the text (the library parses it again)."""

    name = "YYYY-MM"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            calendar_month(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)
        return str(value)


class UtcDateTime(click.ParamType):
    """``2026-03-01``, ``2026-03-01T12:00:00Z`` or with an offset; no zone means UTC."""

    name = "DATETIME"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            self.fail(
                f"{value!r} is not a date or time such as 2026-03-01 or 2026-03-01T12:00:00Z",
                param,
                ctx,
            )
        utc = in_utc(parsed)
        if utc is None:
            self.fail(f"{value!r} {OUT_OF_RANGE}", param, ctx)
        return utc


MONTH = Month()
DATETIME = UtcDateTime()


def format_option(choices: tuple[str, ...] = FORMATS) -> Callable[[T], T]:
    return click.option(  # type: ignore[return-value]
        "--format",
        "fmt",
        type=click.Choice(choices),
        default="table",
        show_default=True,
        help="Output format.",
    )


def progress(label: str) -> Callable[[list[Any]], Iterable[Any]] | None:
    """A progress bar over a list of work items, only when stdout is a terminal."""
    if not sys.stdout.isatty():
        return None

    def wrap(items: list[Any]) -> Iterator[Any]:
        with click.progressbar(items, label=label, file=sys.stderr) as bar:
            yield from bar

    return wrap
