"""How Python values meet the store's SQL: UTC timestamps and sets of strings.

The store holds naive ``TIMESTAMP`` values in UTC; billing works with aware UTC
datetimes and converts at the boundary (:func:`to_db`, :func:`from_db`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import duckdb
import pyarrow as pa

from meterline.utc import as_utc


def to_db(value: datetime) -> datetime:
    """Aware datetime -> the naive UTC value the store holds."""
    return as_utc(value).replace(tzinfo=None)


def from_db(value: datetime) -> datetime:
    """A naive UTC value read from the store -> an aware datetime."""
    return value.replace(tzinfo=UTC)


@contextmanager
def value_set(con: duckdb.DuckDBPyConnection, name: str, values: Iterable[str]) -> Iterator[str]:
    """A one-column (``value``) relation of strings registered as ``name`` for ``IN (...)``.

    Passing a long Python list as a query parameter converts it element by element
    (slow for thousands); an Arrow table is handed over in one piece.
    """
    con.register(name, pa.table({"value": pa.array(list(values), pa.string())}))
    try:
        yield name
    finally:
        con.unregister(name)
