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
itself for a commit of its own whose outcome it did not learn
(:func:`own_lost_commit`); ``billing lake repair`` lists and removes any dangling file.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import duckdb

#: Catalog tables that hold rows of one data file, besides ``ducklake_data_file``.
_PER_FILE_TABLES = (
    "ducklake_file_column_stats",
    "ducklake_file_partition_value",
    "ducklake_delete_file",
)


@dataclass(frozen=True)
class DanglingFile:
    """A live data file (in the current snapshot) whose object is missing."""

    data_file_id: int
    table: str
    """``schema.table``."""
    path: str
    record_count: int
    committed_at: float
    """When the snapshot that added it was committed (seconds since the epoch, UTC)."""


def metadata_alias(catalog: str = "lake") -> str:
    """The name DuckLake attached ``catalog``'s own catalog database under."""
    return f"__ducklake_metadata_{catalog}"


def live_files(con: duckdb.DuckDBPyConnection, catalog: str = "lake") -> list[DanglingFile]:
    """Every data file of the current snapshot, with its absolute path."""
    md = metadata_alias(catalog)
    (data_path,) = con.execute(
        f"SELECT value FROM {md}.ducklake_metadata WHERE key = 'data_path'"
    ).fetchone() or ("",)
    rows = con.execute(
        f"""
        SELECT f.data_file_id, s.schema_name || '.' || t.table_name,
               s.path, s.path_is_relative, t.path, t.path_is_relative,
               f.path, f.path_is_relative, f.record_count, epoch(n.snapshot_time)
        FROM {md}.ducklake_data_file f
        JOIN {md}.ducklake_table t
          ON t.table_id = f.table_id AND t.end_snapshot IS NULL
        JOIN {md}.ducklake_schema s
          ON s.schema_id = t.schema_id AND s.end_snapshot IS NULL
        JOIN {md}.ducklake_snapshot n ON n.snapshot_id = f.begin_snapshot
        WHERE f.end_snapshot IS NULL
        ORDER BY f.data_file_id
        """
    ).fetchall()
    files = []
    for file_id, table, s_path, s_rel, t_path, t_rel, f_path, f_rel, records, at in rows:
        path = data_path
        for part, relative in ((s_path, s_rel), (t_path, t_rel), (f_path, f_rel)):
            path = path + part if relative else part
        files.append(DanglingFile(file_id, table, path, records, float(at)))
    return files


def dangling_files(con: duckdb.DuckDBPyConnection, catalog: str = "lake") -> list[DanglingFile]:
    """The live data files whose object is missing (one listing per table directory)."""
    by_directory: dict[str, list[DanglingFile]] = defaultdict(list)
    for f in live_files(con, catalog):
        by_directory[f.path.rpartition("/")[0]].append(f)
    missing = []
    for directory, files in by_directory.items():
        pattern = directory.replace("'", "''") + "/*"
        present = {row[0] for row in con.execute(f"SELECT file FROM glob('{pattern}')").fetchall()}
        missing += [f for f in files if f.path not in present]
    return missing


def drop_files(
    con: duckdb.DuckDBPyConnection, files: list[DanglingFile], catalog: str = "lake"
) -> int:
    """Remove ``files`` from the catalog, in one PostgreSQL transaction; returns how many.

    Readers no longer look for them; what they held is gone (a writer's lost commit is
    written again from its spool)."""
    if not files:
        return 0
    ids = ", ".join(str(f.data_file_id) for f in files)
    statements = [f"DELETE FROM {t} WHERE data_file_id IN ({ids})" for t in _PER_FILE_TABLES]
    statements.append(f"DELETE FROM ducklake_data_file WHERE data_file_id IN ({ids})")
    script = "BEGIN; " + "; ".join(statements) + "; COMMIT;"
    con.execute(f"CALL postgres_execute('{metadata_alias(catalog)}', '{script}')")
    return len(files)


def own_lost_commit(
    con: duckdb.DuckDBPyConnection,
    *,
    table: str,
    records: int | None,
    started: float,
    ended: float,
    catalog: str = "lake",
    slack_s: float = 2.0,
) -> list[DanglingFile]:
    """The dangling files of one snapshot that a failed flush of ``records`` rows into
    ``table``, between ``started`` and ``ended`` (this host's clock, give or take
    ``slack_s``), committed after all: what its lost acknowledgement made DuckLake
    delete. Empty if there is none (the commit did fail, or its files are there).
    ``records`` None: the batch's size is not known, any such snapshot is taken (every
    dangling file is damage, and the window is the flush's own)."""
    by_snapshot: dict[float, list[DanglingFile]] = defaultdict(list)
    for f in dangling_files(con, catalog):
        if f.table == table and started - slack_s <= f.committed_at <= ended + slack_s:
            by_snapshot[f.committed_at].append(f)
    for files in by_snapshot.values():
        if records is None or sum(f.record_count for f in files) == records:
            return files
    return []
