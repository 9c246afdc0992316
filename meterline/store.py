"""Where usage events live: a DuckDB file by default, or a DuckLake on a PostgreSQL catalog.

The ``usage_events`` schema and every query against it are plain DuckDB SQL, so the
same statements run on an embedded file and on a shared DuckLake.

DuckDB lets one process at a time open a file (even a reader is refused while a
writer holds it). The proxy's writer keeps the file attached only while events keep
coming and lets go as soon as its traffic pauses or another process asks (the
``<file>.reader-waiting`` marker); billing opens it for one command. :func:`open_store`
waits out the other side's lock with a short backoff instead of failing.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from meterline import lakerepair, lakestorage
from meterline.conninfo import LAKE_PREFIX as LAKE_PREFIX  # re-exported
from meterline.conninfo import local_lake_metadata, locator_problem, one_line, shown
from meterline.emptystore import FillError, fill_if_empty, is_empty_file
from meterline.eventschema import EVENT_COLUMNS as EVENT_COLUMNS  # re-exported
from meterline.lakeconfig import LakeConfigError, lake_settings
from meterline.privatefiles import make_private, private_files
from meterline.sqltext import sql_string

DEFAULT_DB = "meterline.duckdb"
DEFAULT_CATALOG = "catalog.yaml"


class StoreError(RuntimeError):
    """The store cannot be opened or used; the message says which and why."""


class StoreLocked(StoreError):
    """Another process held the store's file lock for longer than the wait: the store is
    busy, not broken, and the same request is worth making again a little later."""


def _is_lock_error(err: Exception) -> bool:
    text = str(err)
    return "lock" in text.lower() and ("Conflicting" in text or "Could not set lock" in text)


def _load_extensions(con: duckdb.DuckDBPyConnection, *names: str) -> None:
    """Load extensions from the ``duckdb-ext-*`` wheels (offline: nothing is downloaded)."""
    try:
        import duckdb_ext  # the wheels' namespace package: duckdb_ext/extensions/<ver>/<platform>
    except ImportError as e:
        raise StoreError("DuckLake needs: pip install 'meterline[ducklake]'") from e
    ext_dir = Path(next(iter(duckdb_ext.__path__))) / "extensions"
    con.execute(f"SET extension_directory = {sql_string(str(ext_dir))}")
    for name in names:
        con.execute(f"LOAD {name}")


#: Object storage that hangs: httpfs waits 30 s per try and tries 4 times, with backoff,
#: per request, so a stalled S3 held a proxy's flush (and a shutdown, which waits for it)
#: for about 4 minutes, and a ``billing`` command or a maintenance pass about 2. 5 s and 2
#: tries: a flush fails in 20 s (measured, the S3 server stopped), its events stay in the
#: spool and the writer retries later; ``billing`` says so in one line. Set on every
#: lake attach (:func:`_attach_lake`): the writer's, ``billing``'s, the maintainer's.
LAKE_HTTP_SETTINGS = ("SET http_timeout = 5", "SET http_retries = 1")


def _attach_lake(con: duckdb.DuckDBPyConnection, locator: str, *, create: bool) -> None:
    """``ducklake:postgres:dbname=... host=...``, data files under ``METERLINE_LAKE_DATA``.

    ``create``: make the lake if the database holds none. ``billing`` does not: pointed at
    the wrong database it would otherwise create an empty lake there and report no
    usage, where it should say that nothing is there.

    The ducklake, postgres and httpfs extensions come from the ``duckdb-ext-*`` wheels
    (``pip install 'meterline[ducklake]'``), so attaching works offline. Object storage
    (``s3://...``) is configured from the environment: see :mod:`meterline.lakeconfig`.
    """
    try:
        settings = lake_settings()
    except LakeConfigError as e:
        raise StoreError(str(e)) from None
    _load_extensions(con, "ducklake", "postgres", *(("httpfs",) if settings.remote else ()))
    if settings.remote:
        for statement in LAKE_HTTP_SETTINGS:
            con.execute(statement)
    for statement in settings.setup_sql():
        con.execute(statement)
    options = settings.attach_options() + ("" if create else ", CREATE_IF_NOT_EXISTS false")
    metadata_file = local_lake_metadata(locator)
    if not create and metadata_file is not None and not Path(metadata_file).exists():
        # CREATE_IF_NOT_EXISTS false refuses to make a lake, but only after DuckDB has
        # made the metadata file (a 12 KB DuckDB file named after a typo): not opened.
        raise _no_lake(locator)
    try:
        con.execute(f"ATTACH {sql_string(locator)} AS lake ({options})")
    except duckdb.InvalidInputException as e:
        if "creating a new DuckLake is explicitly disabled" not in str(e):
            raise
        raise _no_lake(locator) from None
    con.execute("USE lake")


class NoLake(StoreError):
    """The database holds no lake, and the attach was not to create one."""


def _no_lake(locator: str) -> NoLake:
    return NoLake(
        f"{shown(locator)}: this database holds no Meterline lake (nothing metered into "
        "it yet? a proxy creates it on its first flush; or check --db)"
    )


#: A process that finds the DuckDB file locked creates ``<file>.reader-waiting``: the
#: proxy's writer, which keeps the file attached between flushes while events keep coming,
#: lets go within ~50 ms of seeing it (see ``addons/metering/storelink.py``).
READER_WAITING_SUFFIX = ".reader-waiting"


def reader_waiting_path(db: str | Path) -> Path:
    return Path(f"{db}{READER_WAITING_SUFFIX}")


def signal_reader_waiting(db: str | Path) -> None:
    """Ask the proxy holding ``db`` to let go (best effort: an empty 0600 marker file)."""
    # A read-only directory: no marker, but the writer still lets go when traffic pauses.
    with contextlib.suppress(OSError):
        os.close(os.open(reader_waiting_path(db), os.O_WRONLY | os.O_CREAT, 0o600))


#: Waiting this long for another process's lock is said (``on_wait``), once.
SAY_WAITING_AFTER_S = 2.0


def _retrying[T](
    loc: str,
    wait_s: float,
    attempt: Callable[[], T],
    *,
    ask: bool = True,
    on_wait: Callable[[str], None] | None = None,
) -> T:
    """``attempt()`` until it succeeds, fails for good, or ``wait_s`` has passed.

    ``ask``: on a locked file, ask the proxy's writer to let go (not when we are it).
    ``on_wait``: told once, with the reason, when the wait passes
    :data:`SAY_WAITING_AFTER_S` (a command would otherwise sit silent for 30 s).
    """
    started = time.monotonic()
    deadline = started + wait_s
    delay = 0.005
    asked = said = False
    try:
        while True:
            try:
                return attempt()
            except duckdb.Error as e:
                now = time.monotonic()
                locked = isinstance(e, duckdb.IOException) and _is_lock_error(e)
                if not _is_transient(loc, e) or now >= deadline:
                    raise (StoreLocked if locked else StoreError)(
                        f"{shown(loc)}: cannot open: {one_line(str(e))}{_hint(loc, e)}"
                    ) from e
                if on_wait is not None and not said and now - started >= SAY_WAITING_AFTER_S:
                    said = True
                    on_wait(f"{shown(loc)}: waiting up to {wait_s:.0f} s: {one_line(str(e))}")
                if ask and locked and not loc.startswith(LAKE_PREFIX):  # a file being
                    signal_reader_waiting(loc)  # created has no writer to ask
                    asked = True
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 0.2)
    finally:
        if asked:  # opened, or given up: the writer need not let go (again) for us
            with contextlib.suppress(OSError):
                reader_waiting_path(loc).unlink(missing_ok=True)


#: DuckDB writes a new file's headers (three 4 KiB blocks) an instant after creating it.
_DUCKDB_HEADERS_BYTES = 3 * 4096
#: A file shorter than its headers and modified this recently is still being created.
_CREATION_S = 5.0


def _being_created(loc: str, err: duckdb.Error) -> bool:
    """A read-only open that came between the proxy creating the file and writing its
    headers: DuckDB calls the file "not a valid DuckDB database file". Worth another try
    only while the file is that short and that new, or when it has become a DuckDB file
    since (its headers written, or a finished file moved in place between the open and
    this check); any other such file is not DuckDB's, and the error is given at once.

    An empty file, however old, is always worth another try: a writer's next attempt
    fills it (:mod:`meterline.emptystore`), a reader's says "no such database"."""
    if "not a valid DuckDB database file" not in str(err):
        return False
    try:
        st = os.stat(loc)
    except OSError:
        return False
    if st.st_size == 0:
        return True
    if st.st_size >= _DUCKDB_HEADERS_BYTES:  # finished (or put in place) since the error?
        with contextlib.suppress(OSError):
            return _recent(st.st_mtime) and looks_like_duckdb(loc)
        return False
    return _recent(st.st_mtime)


def looks_like_duckdb(loc: str | Path) -> bool:
    """A DuckDB database file: a checksum, then ``DUCK`` (bytes 8 to 12). Raises
    ``OSError`` when it cannot be read (a missing file is not one)."""
    with open(loc, "rb") as f:
        return f.read(12)[8:] == b"DUCK"


def _recent(mtime: float) -> bool:
    return time.time() - mtime < _CREATION_S


def no_store_yet(path: str | Path) -> bool:
    """No store at ``path`` yet: no file, or an empty one (a creation that failed, or a
    file made in advance; a writer fills it, see :mod:`meterline.emptystore`)."""
    return not Path(path).exists() or is_empty_file(path)


def check_locator(locator: str) -> None:
    """Refuse a PostgreSQL connection string given without ``ducklake:postgres:``, before
    DuckDB creates a file named after it (see :func:`meterline.conninfo.locator_problem`)."""
    problem = locator_problem(locator)
    if problem is not None:
        raise StoreError(problem)


def no_such_database(loc: str) -> StoreError:
    """A missing file, or an empty one (named so: the file is there, its database is not)."""
    why = "an empty file: nothing metered yet?" if is_empty_file(loc) else "nothing metered yet?"
    return StoreError(f"{shown(loc)}: no such database ({why})")


def _hint(loc: str, err: duckdb.Error) -> str:
    if not loc.startswith(LAKE_PREFIX):
        return ""
    text = str(err)
    if "permission denied" in text.lower():
        return (
            " (the lake's PostgreSQL role must own the database, or have CREATE on schema "
            "public: CREATE DATABASE meterline OWNER meterline)"
        )
    if "Failed to load existing DuckLake" in text and "transaction is aborted" in text:
        return (
            " (PostgreSQL refused a read of the lake's catalog: check the role's privileges "
            "on its ducklake_* tables; PostgreSQL's own log names the table)"
        )
    if "does not match existing data path" in text:
        return (
            " (METERLINE_LAKE_DATA differs from the data path the lake was created with: "
            "unset it, an existing lake knows its own, or set it to that path)"
        )
    return io_hint(text)


def io_hint(text: str, storage: str | None = None) -> str:
    """What to check when the lake's storage refused, could not be reached, or no
    longer has a file the lake names.

    ``storage``: why the data path is not the lake's storage from here, when the caller
    looked (:func:`meterline.lakerepair.storage_problem`): then no file is lost, and the
    mount or the endpoint is what to check, never ``billing lake repair``."""
    if storage is not None:
        return f" ({storage})"
    if lakerepair.names_a_lost_file(text):
        return (
            " (the lake names a data file its storage no longer has: `billing lake repair` "
            "checks the storage is the lake's, lists such files and `--drop` removes them; "
            "see docs/fleet.md)"
        )
    if "ducklake-" in text and lakestorage.says_not_found(text):  # a write, or a listing
        return f" (the lake's object storage has no such bucket: {_where_to_look()})"
    if "s3://" in text or "HTTP" in text:
        return (
            " (check the lake's object storage settings: METERLINE_S3_ENDPOINT, "
            "METERLINE_S3_USE_SSL, METERLINE_S3_URL_STYLE, AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY; see docs/fleet.md)"
        )
    return ""


def _where_to_look() -> str:
    try:
        data_path = lake_settings().data_path
    except LakeConfigError:
        data_path = None
    if data_path is None or not lakestorage.is_remote(data_path):
        return "check that the bucket of the lake's data path exists at METERLINE_S3_ENDPOINT"
    return lakestorage.where_to_look(data_path)


def open_store(
    locator: str | Path = DEFAULT_DB,
    *,
    read_only: bool = False,
    wait_s: float = 30.0,
    create_lake: bool = True,
    on_wait: Callable[[str], None] | None = None,
) -> duckdb.DuckDBPyConnection:
    """Open the store, waiting up to ``wait_s`` for another process's lock on the file.

    ``create_lake=False``: a PostgreSQL database that holds no lake is an error, not a
    new empty lake (see :func:`_attach_lake`)."""
    loc = str(locator)
    check_locator(loc)
    if loc.startswith(LAKE_PREFIX):
        return _retrying(loc, wait_s, lambda: _open_lake(loc, create_lake), on_wait=on_wait)
    if read_only and not Path(loc).exists():
        raise no_such_database(loc)
    if read_only:
        return _retrying(loc, wait_s, lambda: _connect_reader(loc), on_wait=on_wait)
    return _retrying(loc, wait_s, lambda: _connect_private(loc), on_wait=on_wait)


def _connect_reader(path: str) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB file read-only. An empty one is no database yet, unless it was made
    an instant ago (a writer is creating it: :func:`_being_created` waits that out)."""
    try:
        empty_since = os.stat(path).st_mtime if is_empty_file(path) else None
    except OSError:
        empty_since = None
    if empty_since is not None and not _recent(empty_since):
        raise no_such_database(path)
    return duckdb.connect(path, read_only=True)


def _fill_empty(path: str) -> None:
    """Make an empty file a new database before DuckDB opens it (it refuses one)."""
    try:
        fill_if_empty(path)
    except FillError as e:
        raise StoreError(
            f"{shown(path)}: cannot create: {e.strerror} (the file is left empty; "
            "a new database is written into it on the next try)"
        ) from e


def _connect_private(path: str) -> duckdb.DuckDBPyConnection:
    """Open (or create) a writable DuckDB file, private to this user (0600)."""
    with private_files():
        _fill_empty(path)
        con = duckdb.connect(path)
    make_private(path)
    return con


def attach_file(con: duckdb.DuckDBPyConnection, path: str, alias: str, wait_s: float) -> None:
    """``ATTACH`` the DuckDB file ``path`` to ``con`` as ``alias``, waiting out a reader."""

    check_locator(path)

    def attach() -> None:
        _fill_empty(path)
        con.execute(f"ATTACH {sql_string(path)} AS {alias}")

    with private_files():
        _retrying(path, wait_s, attach, ask=False)
    make_private(path)


def attach_lake(con: duckdb.DuckDBPyConnection, locator: str, wait_s: float) -> None:
    """Attach the DuckLake ``locator`` to ``con`` as ``lake`` and make it the default."""
    check_locator(locator)
    _retrying(locator, wait_s, lambda: _attach_or_create_lake(con, locator))


def _attach_or_create_lake(con: duckdb.DuckDBPyConnection, locator: str) -> None:
    """Attach the lake, or create it once its data path has taken a write.

    DuckLake records the data path when it creates the catalog and refuses any other
    afterwards: a bucket mistyped on a fleet's first start made a lake no corrected
    ``METERLINE_LAKE_DATA`` could attach. So a database that holds no lake gets one only
    after :func:`meterline.lakestorage.check_writable` wrote under the data path; an
    existing lake is attached as before, at the cost of nothing more."""
    try:
        _attach_lake(con, locator, create=False)
        return
    except NoLake:
        pass
    _check_new_data_path(con, locator)
    _attach_lake(con, locator, create=True)


def _check_new_data_path(con: duckdb.DuckDBPyConnection, locator: str) -> None:
    """:class:`StoreError` unless the new lake's data path (``METERLINE_LAKE_DATA``) takes a
    write; nothing is created in PostgreSQL then. Unset, DuckLake picks its own."""
    data_path = lake_settings().data_path  # checked already by the attach
    if data_path is None:
        return
    try:
        lakestorage.check_writable(con, data_path)
    except (OSError, duckdb.Error) as e:
        text = one_line(str(e))
        if lakestorage.is_remote(data_path):
            look = lakestorage.where_to_look(data_path)
        else:
            look = f"check that {data_path} can be written on this host"
        raise StoreError(
            f"{shown(locator)}: cannot create the lake: its data path {data_path} takes no "
            f"write: {text} ({look}; nothing was created in PostgreSQL: once "
            "METERLINE_LAKE_DATA is right the next attempt creates the lake)"
        ) from e


LAKE_CONNECTION_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    "allow_unsigned_extensions": True,
    "autoinstall_known_extensions": False,  # never fetched: only the wheels' files load
}
"""For a connection that only loads the ``duckdb-ext-*`` wheels' extensions, by name.

DuckDB checks an extension's signature on every ``LOAD`` by hashing the whole file: the
ducklake and postgres binaries are ~100 MB together, 0.3 s of every billing command on a
lake (0.01 s without). The files come from the same installed wheels as duckdb itself
(``_load_extensions`` points ``extension_directory`` at them and loads nothing else), so
the check guards against nothing a writable site-packages would not already allow."""


def _open_lake(locator: str, create: bool) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(config=LAKE_CONNECTION_CONFIG)
    try:
        if create:
            _attach_or_create_lake(con, locator)
        else:
            _attach_lake(con, locator, create=False)
    except BaseException:
        con.close()
        raise
    return con


def _is_transient(loc: str, err: duckdb.Error) -> bool:
    """Worth another try: another process's file lock, a file the proxy is creating, or a
    fleet racing to create a lake."""
    text = str(err)
    if isinstance(err, duckdb.IOException) and _is_lock_error(err):
        return True
    if _being_created(loc, err):
        return True
    # Two proxies attaching a new DuckLake at once both try to create its metadata tables
    # in PostgreSQL; the loser sees them appear mid-way and succeeds on the next attach.
    return "Failed to initialize DuckLake" in text and (
        "already exists" in text or "duplicate key" in text
    )


@contextmanager
def store(
    locator: str | Path = DEFAULT_DB,
    *,
    read_only: bool = False,
    wait_s: float = 30.0,
    create_lake: bool = True,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open, yield, close: hold the file no longer than one unit of work.

    A writable store is used under :func:`private_files`: the ``.wal`` DuckDB creates
    during the work is 0600 like the database file.
    """
    with contextlib.nullcontext() if read_only else private_files():
        con = open_store(
            locator, read_only=read_only, wait_s=wait_s, create_lake=create_lake, on_wait=on_wait
        )
        try:
            yield con
        finally:
            con.close()
