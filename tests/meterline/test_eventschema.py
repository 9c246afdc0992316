"""The schema table is the one source: migrations, the writer, events and the manual agree."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

from addons.metering import batchsql
from addons.metering.events import Exchange, build_event
from addons.metering.usage import Usage
from meterline.catalog import TOKEN_TYPES
from meterline.eventschema import (
    EVENT_COLUMNS,
    EVENT_FIELDS,
    SPOOL_TYPES,
    TOKEN_COLUMNS,
    create_table_sql,
)
from meterline.migrations import EVENT_MIGRATIONS, migrate
from meterline.store import store

ROOT = Path(__file__).resolve().parents[2]
HEADING = re.compile(r"^#+ Event schema \(`usage_events`\)\s*$")


def _describe(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str, bool]]:
    rows = con.execute(f"DESCRIBE {table}").fetchall()
    return [(name, typ, null == "NO") for name, typ, null, *_ in rows]


def _schema() -> list[tuple[str, str, bool]]:
    return [(f.name, f.type, f.required) for f in EVENT_FIELDS]


def test_migrated_table_is_the_schema(tmp_path: Path) -> None:
    with store(tmp_path / "m.duckdb") as con:
        migrate(con, EVENT_MIGRATIONS)
        assert _describe(con, "usage_events") == _schema()


def test_a_new_table_from_the_schema_equals_the_migrated_one(tmp_path: Path) -> None:
    with store(tmp_path / "m.duckdb") as con:
        migrate(con, EVENT_MIGRATIONS)
        con.execute(create_table_sql("fresh"))
        assert _describe(con, "fresh") == _describe(con, "usage_events")


def test_migrations_are_named_in_order() -> None:
    names = [m.name for m in EVENT_MIGRATIONS]
    assert names == sorted(names)
    assert len(set(names)) == len(names)


def test_the_writer_and_the_events_use_the_schema() -> None:
    assert {
        f.name: f.type for f in EVENT_FIELDS if f.name != "ingested_at"
    } == batchsql.SPOOL_COLUMNS
    ex = Exchange("openai", "openai", "POST", "api.openai.com", "/v1/x?key=k", "c", None)
    row = build_event(ex, Usage(input=1, output=2, model="m", response_id="r"), "p")
    assert list(row) == list(SPOOL_TYPES)


def test_token_columns_cover_the_catalog_token_types() -> None:
    assert tuple(TOKEN_COLUMNS) == TOKEN_TYPES
    assert set(TOKEN_COLUMNS.values()) <= set(EVENT_COLUMNS)


def _manual() -> Path:
    """The document holding the event schema table (README.md, or docs/events.md)."""
    for path in (ROOT / "docs" / "events.md", ROOT / "README.md"):
        if path.exists() and any(HEADING.match(x) for x in path.read_text().splitlines()):
            return path
    raise AssertionError("no 'Event schema (`usage_events`)' section in README.md or docs/")


def _manual_table(path: Path) -> list[tuple[str, str]]:
    """(column, type) of each row of the first table under the heading, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next(i for i, x in enumerate(lines) if HEADING.match(x))
    rows: list[tuple[str, str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] in ("column", "---"):
            continue
        rows.extend((name, cells[1]) for name in re.findall(r"`([a-z0-9_]+)`", cells[0]))
    return rows


def test_the_manual_lists_every_column_with_its_type() -> None:
    assert _manual_table(_manual()) == [(f.name, f.type) for f in EVENT_FIELDS]


def test_token_types_are_read_in_the_order_of_their_columns() -> None:
    """Query results are zipped with TOKEN_TYPES in TOKEN_COLUMNS' order."""
    from meterline.catalog import TOKEN_TYPES
    from meterline.eventschema import TOKEN_COLUMNS

    assert tuple(TOKEN_COLUMNS) == TOKEN_TYPES
