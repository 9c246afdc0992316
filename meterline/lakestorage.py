"""Whether a lake's data path is the lake's storage, reachable from here: its marker.

A lake's catalog (PostgreSQL) and its data files (a shared disk, a bucket) are reached
separately. Where the disk is not mounted on a host, or ``METERLINE_S3_ENDPOINT`` names
another S3 server, every file the catalog names reads as missing: a reader took them for
lost files and ``billing lake repair --drop`` removed them all (an independent probe: 255
of 293 answered calls lost after the mount came back), and a writer whose mount vanished
under it committed its flushes into the empty mountpoint, hidden once the mount came back.

A marker object at the root of the data path, ``.meterline-lake``, holding the lake's
identity (the UUID DuckLake gave its ``main`` schema when it created the catalog), tells
the two apart. A proxy's writer writes it
when it first attaches a lake (a new one, or an existing one whose data path already holds
some of the lake's files), checks it before each flush, and writes nothing while it is
missing; ``billing lake repair`` and the writer's own repair drop nothing then.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence

import duckdb

from meterline.sqltext import sql_string

MARKER_NAME = ".meterline-lake"

#: How a marker written before the identity was the ``main`` schema's UUID begins: when
#: the lake's oldest snapshot was taken, which ``ducklake_expire_snapshots`` changes (and
#: then every such marker read as another lake's).
LEGACY_PREFIX = "meterline lake created "


#: An HTTP 404 in an error text, not the digits inside a port or a number (a connection
#: error to ``127.0.0.1:40483`` is no missing file).
NOT_FOUND = re.compile(r"(?<![\w:.])404(?![\w.])")


def says_not_found(error: str) -> bool:
    return "No such file" in error or "not found" in error.lower() or bool(NOT_FOUND.search(error))


class StorageUnreachable(RuntimeError):
    """The lake's data path, as seen from this host, is not the lake's storage."""


def is_remote(path: str) -> bool:
    return "://" in path


def marker_path(data_path: str) -> str:
    return data_path.rstrip("/") + "/" + MARKER_NAME


def is_gone(con: duckdb.DuckDBPyConnection, path: str) -> bool:
    """Whether opening ``path`` the way a reader does finds no file there."""
    if not is_remote(path):
        return not os.path.exists(path)
    try:
        con.execute(f"SELECT count(*) FROM parquet_metadata({sql_string(path)})")
    except duckdb.Error as e:
        return says_not_found(str(e))
    return False


def read_marker(con: duckdb.DuckDBPyConnection, data_path: str) -> str | None:
    """The marker's text, or None when there is none (other errors are raised)."""
    path = marker_path(data_path)
    if not is_remote(path):
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip()
        except FileNotFoundError:
            return None
    try:
        row = con.execute(f"SELECT content FROM read_text({sql_string(path)})").fetchone()
    except duckdb.Error as e:
        if says_not_found(str(e)):
            return None
        raise
    return str(row[0]).strip() if row else None


def marker_exists(con: duckdb.DuckDBPyConnection, data_path: str) -> bool:
    """One ``stat`` on a disk; on object storage one HEAD (the size, not the content)."""
    path = marker_path(data_path)
    if not is_remote(path):
        return os.path.exists(path)
    try:
        con.execute(f"SELECT size FROM read_blob({sql_string(path)})").fetchall()
    except duckdb.Error as e:
        if says_not_found(str(e)):
            return False
        raise
    return True


def write_marker(con: duckdb.DuckDBPyConnection, data_path: str, identity: str) -> None:
    path = marker_path(data_path)
    if not is_remote(path):
        os.makedirs(data_path, exist_ok=True)
        # one name per thread: a proxy's writer and its maintainer (or two writers of one
        # process) may write the marker at once, and a shared name lost one's rename
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(identity + "\n")
        os.replace(tmp, path)  # two proxies at once write the same text
        return
    con.execute(
        f"COPY (SELECT {sql_string(identity)} AS lake) TO {sql_string(path)} "
        "(FORMAT csv, HEADER false, QUOTE '')"
    )


#: What a lake's first attach writes to its data path before the catalog is created
#: (:func:`check_writable`). Not a lake file: a disk's is removed at once; on object
#: storage, which DuckDB cannot delete through SQL, it stays, a few bytes, until a
#: maintenance pass's orphan cleanup removes it.
WRITE_CHECK_NAME = ".meterline-write-check"


def check_writable(con: duckdb.DuckDBPyConnection, data_path: str) -> None:
    """Write a small object (a file) under ``data_path``; raises ``duckdb.Error`` or
    ``OSError`` when its bucket is missing, the credentials may not write there, or the
    directory cannot be made.

    Creating a lake in PostgreSQL binds it to its data path for good: a mistyped bucket
    on a fleet's first start left a catalog that refused the corrected path."""
    path = data_path.rstrip("/") + "/" + WRITE_CHECK_NAME
    if not is_remote(path):
        os.makedirs(data_path, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("meterline\n")
        os.remove(tmp)
        return
    con.execute(
        f"COPY (SELECT 'meterline' AS lake) TO {sql_string(path)} "
        "(FORMAT csv, HEADER false, QUOTE '')"
    )


def root_problem(
    con: duckdb.DuckDBPyConnection,
    data_path: str,
    identity: str,
    newest: Sequence[str],
    *,
    legacy: Sequence[str] = (),
) -> str | None:
    """What is wrong with ``data_path`` as the lake's storage seen from here, or None.

    ``newest``: the path of each table's newest live file (none: a new or empty lake,
    whose storage anything may be). The marker, when there, must be this lake's
    (``identity``, or one of ``legacy``, what an earlier release wrote for it); when
    not (a lake older than the marker), one of ``newest`` must be there. A marker of the
    earlier form (:data:`LEGACY_PREFIX`) that no longer matches, its lake's snapshots
    expired since, counts as none: one of ``newest`` must be there."""
    if newest and not is_remote(data_path):
        if not os.path.isdir(data_path):
            return f"{data_path} does not exist on this host"
        with os.scandir(data_path) as entries:
            if next(entries, None) is None:
                return f"{data_path} is empty on this host"
    marker = read_marker(con, data_path)
    if marker is not None and (marker == identity or marker in legacy):
        return None
    if marker is not None and not marker.startswith(LEGACY_PREFIX):
        return f"{marker_path(data_path)} belongs to another lake ({marker})"
    files_here = any(not is_gone(con, p) for p in newest)
    if marker is not None:  # an earlier release's, unverifiable now
        if files_here:
            return None
        return f"{marker_path(data_path)} belongs to another lake ({marker})"
    if not newest or files_here:
        return None
    return (
        f"{data_path} holds neither the lake's marker ({MARKER_NAME}) nor the newest file "
        f"of any of its {len(newest)} tables"
    )


def where_to_look(data_path: str) -> str:
    """What to check when ``data_path`` is not the lake's storage from here."""
    if is_remote(data_path):
        bucket = data_path.partition("://")[2].split("/")[0]
        endpoint = os.environ.get("METERLINE_S3_ENDPOINT") or "AWS (METERLINE_S3_ENDPOINT unset)"
        return (
            f"check that bucket {bucket} exists at {endpoint} and that METERLINE_S3_ENDPOINT, "
            "METERLINE_S3_URL_STYLE and the credentials name the lake's object storage"
        )
    return f"check that the lake's disk is mounted at {data_path} on this host"


def unreachable(data_path: str, problem: str) -> StorageUnreachable:
    return StorageUnreachable(
        f"the lake's data path is not its storage from here: {problem} "
        f"({where_to_look(data_path)}; the lake's files are not lost: do not run "
        "`billing lake repair --drop`; see docs/fleet.md)"
    )
