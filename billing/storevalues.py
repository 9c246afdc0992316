"""How Python values meet the store's SQL: UTC timestamps, decimals and sets of strings.

The store holds naive ``TIMESTAMP`` values in UTC; billing works with aware UTC
datetimes and converts at the boundary (:func:`to_db`, :func:`from_db`). Money and
quantities are ``DECIMAL(38, 12)``: every Decimal goes in through :func:`db_decimal`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal

import duckdb
import pyarrow as pa

from billing.errors import UserError
from billing.money import decimal_text, money_context
from meterline.utc import as_utc


def to_db(value: datetime) -> datetime:
    """Aware datetime -> the naive UTC value the store holds."""
    return as_utc(value).replace(tzinfo=None)


class AmountTooLarge(UserError, ValueError):
    """An amount or quantity the store's ``DECIMAL(38, 12)`` columns cannot hold."""


STORABLE = Decimal(10) ** 26
"""The first magnitude ``DECIMAL(38, 12)`` cannot hold (27 digits before the point: at most
26 fit)."""
_SCALE = Decimal("1e-12")


def db_decimal(value: Decimal) -> Decimal:
    """``value`` as the store's ``DECIMAL(38, 12)`` takes it: fixed point, 12 decimals.

    Never hand DuckDB a Decimal in exponent form: its Python binding reads
    ``Decimal("1E+3")`` as 1 and ``Decimal("1E+26")`` as 1.59E-8. Quantized to 12
    decimals the exponent is -12, which it converts exactly. Values with more decimals
    are cut to 12 here (exact ones live in a line's detail JSON); a non-finite value or
    one of more than 26 digits before the point is refused.
    """
    if not value.is_finite() or abs(value) >= STORABLE:
        raise AmountTooLarge(
            f"{decimal_text(value)} does not fit the store (at most 26 digits before the point)"
        )
    with money_context():  # 50 digits: DECIMAL(38, 12) values exceed the default 28
        return value.quantize(_SCALE)


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
