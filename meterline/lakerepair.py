"""Files a lake's catalog lists that its storage no longer has, and their removal.

DuckLake writes a commit's Parquet file first, then commits the catalog rows naming it
in PostgreSQL; when the commit fails, it deletes the file. A commit whose acknowledgement
is lost (the connection dropped after PostgreSQL committed: a network blip, a failover,
a restarted pooler) is taken for failed, so the file goes while the rows naming it stay:
every read of that table then fails on the missing file, for the whole fleet, and
nothing in DuckLake repairs it. (A bucket emptied by hand does the same.)

The writer's batch behind such a commit is still in its spool (the flush failed, as far
as it knows): removing the dangling rows makes the table readable again, and the next
flush writes the batch once more, checked against what is stored. The writer does that
itself for a commit of its own whose outcome it did not learn (:func:`lost_in`);
``billing lake repair`` lists and removes any dangling file.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import duckdb

from meterline import lakestorage
from meterline.lakestorage import StorageUnreachable as StorageUnreachable  # re-exported

#: Catalog tables that hold rows of one data file, besides ``ducklake_data_file``.
PER_FILE_TABLES = (
    "ducklake_file_column_stats",
    "ducklake_delete_file",
    "ducklake_file_partition_value",
)


@dataclass(frozen=True)
class LakeFile:
    """A live file of a lake table: data, or the deletions of an UPDATE/DELETE."""

    file_id: int
    kind: str
    """``data`` or ``delete``."""
    table: str
    """``schema.table``."""
    path: str
    record_count: int
    committed_at: float
    """When the snapshot that added it was committed (seconds since the epoch, UTC); 0
    once that snapshot expired (the file outlives it: an inner join with the snapshots
    left it out, and after maintenance a lake listed no file at all)."""


def metadata_alias(catalog: str = "lake") -> str:
    """The name DuckLake attached ``catalog``'s own catalog database under."""
    return f"__ducklake_metadata_{catalog}"


def postgres_catalog(con: duckdb.DuckDBPyConnection, catalog: str = "lake") -> str | None:
    """The name under which DuckLake attached ``catalog``'s PostgreSQL catalog, if it is
    one (a DuckDB or SQLite catalog: None)."""
    alias = metadata_alias(catalog)
    attached = con.execute(
        "SELECT count(*) FROM duckdb_databases() "
        f"WHERE database_name = '{alias}' AND type = 'postgres'"
    ).fetchall()
    return alias if attached and attached[0][0] else None


_KINDS = {
    # kind: (catalog table, id column, record count column)
    "data": ("ducklake_data_file", "data_file_id", "record_count"),
    "delete": ("ducklake_delete_file", "delete_file_id", "delete_count"),
}


def data_path(con: duckdb.DuckDBPyConnection, catalog: str = "lake") -> str:
    """The lake's data path, as its catalog records it."""
    md = metadata_alias(catalog)
    row = con.execute(f"SELECT value FROM {md}.ducklake_metadata WHERE key = 'data_path'")
    (path,) = row.fetchone() or ("",)
    return str(path)


def identity(con: duckdb.DuckDBPyConnection, catalog: str = "lake") -> str:
    """What names this lake in its data path's marker: the UUID DuckLake gave its ``main``
    schema when it created the catalog (schema 0, created with it). It stays for the
    lake's life: unlike a snapshot's row, ``ducklake_expire_snapshots`` never removes a
    live schema's."""
    md = metadata_alias(catalog)
    row = con.execute(
        f"SELECT schema_uuid::VARCHAR FROM {md}.ducklake_schema "
        "WHERE schema_id = 0 AND end_snapshot IS NULL"
    ).fetchone()
    return f"meterline lake {row[0] if row else 'unknown'}"


def legacy_identity(con: duckdb.DuckDBPyConnection, catalog: str = "lake") -> str:
    """The identity an earlier release wrote: when the oldest snapshot still in the catalog
    was taken. True of the lake's creation only until its first snapshots expire
    (:func:`meterline.lakemaint.maintain`), so only accepted, never written."""
    md = metadata_alias(catalog)
    row = con.execute(
        f"SELECT strftime(snapshot_time, '%Y-%m-%dT%H:%M:%S.%f') FROM {md}.ducklake_snapshot "
        "ORDER BY snapshot_id LIMIT 1"
    ).fetchone()
    return f"{lakestorage.LEGACY_PREFIX}{row[0] if row else 'unknown'}"


def storage_problem(
    con: duckdb.DuckDBPyConnection, files: list[LakeFile] | None = None, catalog: str = "lake"
) -> str | None:
    """Why the lake's data path is not its storage as seen from here, or None."""
    files = live_files(con, catalog) if files is None else files
    newest: dict[str, str] = {}  # the newest file of each table
    for f in sorted(files, key=lambda f: (f.committed_at, f.file_id)):
        newest[f.table] = f.path
    return lakestorage.root_problem(
        con,
        data_path(con, catalog),
        identity(con, catalog),
        list(newest.values()),
        legacy=(legacy_identity(con, catalog),),
    )


def check_storage(con: duckdb.DuckDBPyConnection, files: list[LakeFile] | None = None) -> None:
    """Raise :class:`StorageUnreachable` (what to check) unless the data path is the lake's."""
    problem = storage_problem(con, files)
    if problem is not None:
        raise lakestorage.unreachable(data_path(con), problem)


def ensure_marker(con: duckdb.DuckDBPyConnection) -> str:
    """A writer attaching the lake: check its storage, and mark it if it is not yet (a
    new lake, or one older than the marker whose data path holds its files), or still
    with an earlier release's identity (rewritten before its snapshots expire and it
    stops matching). Returns the data path."""
    files = live_files(con)
    check_storage(con, files)
    root = data_path(con)
    if lakestorage.read_marker(con, root) != identity(con):
        _write_marker(con, root)
    return root


def upgrade_marker(con: duckdb.DuckDBPyConnection, catalog: str = "lake") -> None:
    """Before snapshots expire: a marker an earlier release wrote, still matching (or the
    lake's files beside it), gets the lake's lasting identity. Anything else is left."""
    root = data_path(con, catalog)
    marker = lakestorage.read_marker(con, root)
    if marker is None or not marker.startswith(lakestorage.LEGACY_PREFIX):
        return
    if storage_problem(con, catalog=catalog) is None:
        _write_marker(con, root, catalog)


def _write_marker(con: duckdb.DuckDBPyConnection, root: str, catalog: str = "lake") -> None:
    try:
        lakestorage.write_marker(con, root, identity(con, catalog))
    except (OSError, duckdb.Error) as e:
        raise lakestorage.StorageUnreachable(
            f"cannot write the lake's marker {lakestorage.marker_path(root)}: {e} "
            f"({lakestorage.where_to_look(root)})"
        ) from e


def live_files(con: duckdb.DuckDBPyConnection, catalog: str = "lake") -> list[LakeFile]:
    """Every data and delete file of the current snapshot, with its absolute path."""
    md = metadata_alias(catalog)
    root = data_path(con, catalog)
    files = []
    for kind, (table, id_column, count_column) in _KINDS.items():
        rows = con.execute(
            f"""
            SELECT f.{id_column}, s.schema_name || '.' || t.table_name,
                   s.path, s.path_is_relative, t.path, t.path_is_relative,
                   f.path, f.path_is_relative, f.{count_column},
                   coalesce(epoch(n.snapshot_time), 0)
            FROM {md}.{table} f
            JOIN {md}.ducklake_table t
              ON t.table_id = f.table_id AND t.end_snapshot IS NULL
            JOIN {md}.ducklake_schema s
              ON s.schema_id = t.schema_id AND s.end_snapshot IS NULL
            LEFT JOIN {md}.ducklake_snapshot n ON n.snapshot_id = f.begin_snapshot
            WHERE f.end_snapshot IS NULL
            ORDER BY f.{id_column}
            """
        ).fetchall()
        for file_id, name, s_path, s_rel, t_path, t_rel, f_path, f_rel, records, at in rows:
            path = root
            for part, relative in ((s_path, s_rel), (t_path, t_rel), (f_path, f_rel)):
                path = path + part if relative else part
            files.append(LakeFile(file_id, kind, name, path, records or 0, float(at)))
    return files


def dangling_files(
    con: duckdb.DuckDBPyConnection, catalog: str = "lake", *, check: bool = True
) -> list[LakeFile]:
    """The live files whose object is missing.

    ``check``: first make sure the data path is the lake's storage from here
    (:func:`check_storage`, raising :class:`StorageUnreachable`): where the disk is not
    mounted or the endpoint is another server's, every file reads as missing.

    One listing per table directory finds the candidates; each is then confirmed by
    opening it the way a reader does (a local path: the file system; object storage:
    its Parquet footer), so a path spelled differently from the listing (``a//b``, a
    symlink) is never taken for a missing one."""
    files = live_files(con, catalog)
    if check:
        check_storage(con, files)
    by_directory: dict[str, list[LakeFile]] = defaultdict(list)
    for f in files:
        by_directory[f.path.rpartition("/")[0]].append(f)
    missing = []
    for directory, in_directory in by_directory.items():
        pattern = directory.replace("'", "''") + "/*"
        present = {row[0] for row in con.execute(f"SELECT file FROM glob('{pattern}')").fetchall()}
        missing += [f for f in in_directory if f.path not in present and _gone(con, f.path)]
    return missing


def wholesale_loss(con: duckdb.DuckDBPyConnection, missing: list[LakeFile]) -> str | None:
    """Why ``missing`` looks like storage that is not the lake's rather than lost files,
    or None. A lost acknowledgement loses one commit's files; a disk not mounted, a
    bucket emptied or another endpoint loses every file, or every file of a table."""
    if not missing:
        return None
    files = live_files(con)
    if len(missing) == len(files):
        return f"every file the lake names ({len(files)}) is missing"
    gone = {f.file_id for f in missing if f.kind == "data"}
    for table in sorted({f.table for f in missing if f.kind == "data"}):
        data = [f for f in files if f.table == table and f.kind == "data"]
        # A file whose snapshot expired (committed_at 0) counts as a commit of its own.
        commits = {f.committed_at or -f.file_id - 1 for f in data}
        if all(f.file_id in gone for f in data) and len(commits) > 1:
            rows = sum(f.record_count for f in data)
            return (
                f"every file of {table} ({len(data)} files, {rows} rows, "
                f"{len(commits)} commits) is missing"
            )
    return None


def names_a_lost_file(error: str) -> bool:
    """Whether a read failed on a lake file that is not there (a write that found no
    bucket is not: that is the storage's settings)."""
    if "ducklake-" not in error:
        return False
    return "No such file" in error or (
        ("HTTP GET" in error or "HTTP HEAD" in error) and bool(lakestorage.NOT_FOUND.search(error))
    )


def _gone(con: duckdb.DuckDBPyConnection, path: str) -> bool:
    return lakestorage.is_gone(con, path)


def drop_files(con: duckdb.DuckDBPyConnection, files: list[LakeFile], catalog: str = "lake") -> int:
    """Remove ``files`` from the catalog, in one PostgreSQL transaction; returns how many.

    Readers no longer look for them; what a data file held is gone (a writer's lost
    commit is written again from its spool), and what a delete file deleted is back
    (with the data file of the same lost UPDATE dropped too, the update never happened).
    """
    if not files:
        return 0
    statements = []
    data = ", ".join(str(f.file_id) for f in files if f.kind == "data")
    if data:
        statements += [f"DELETE FROM {t} WHERE data_file_id IN ({data})" for t in PER_FILE_TABLES]
        statements.append(f"DELETE FROM ducklake_data_file WHERE data_file_id IN ({data})")
    deletes = ", ".join(str(f.file_id) for f in files if f.kind == "delete")
    if deletes:
        statements.append(f"DELETE FROM ducklake_delete_file WHERE delete_file_id IN ({deletes})")
    script = "BEGIN; " + "; ".join(statements) + "; COMMIT;"
    con.execute(f"CALL postgres_execute('{metadata_alias(catalog)}', '{script}')")
    return len(files)


def lost_in(
    con: duckdb.DuckDBPyConnection,
    windows: list[tuple[float, float]],
    *,
    catalog: str = "lake",
    slack_s: float = 2.0,
) -> list[LakeFile]:
    """The dangling files committed within one of ``windows`` (the times of flushes that
    failed, on this host's clock, give or take ``slack_s``): what a lost acknowledgement
    made DuckLake delete, whichever table the commit wrote (the events, a migration, the
    maintenance lease). Any dangling file is damage; the windows keep the check to
    commits this writer may have made, whose batches are still in its spool."""
    return [
        f
        for f in dangling_files(con, catalog)
        if any(start - slack_s <= f.committed_at <= end + slack_s for start, end in windows)
    ]
