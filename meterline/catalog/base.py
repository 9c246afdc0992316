"""Shared types of the catalog models: token types, money, currency codes, durations."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal, get_args

from iso4217 import Currency
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
)
from pydantic_core import CoreSchema

TokenType = Literal[
    "input",
    "cached_input",
    "cache_write",
    "cache_write_1h",
    "audio_input",
    "cached_audio_input",
    "output",
    "audio_output",
    "web_search",
]
TOKEN_TYPES: tuple[TokenType, ...] = get_args(TokenType)
"""Every metered type a feature's ``token_types`` may list, in the order of
:data:`meterline.eventschema.TOKEN_COLUMNS` (query results are read in it)."""
CALL_TYPES: frozenset[TokenType] = frozenset({"web_search"})
"""The metered types that count billed server-side tool calls, not tokens: priced per
call (``per: 1000``), never added into a token total, never in a feature's default
``token_types``, and never mixed with token types in one feature."""
TOKEN_ONLY_TYPES: tuple[TokenType, ...] = tuple(t for t in TOKEN_TYPES if t not in CALL_TYPES)
"""The token types proper (a feature's default ``token_types``; what a token total adds)."""

FINGERPRINT_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
KEY_RE = r"^[a-z0-9][a-z0-9_.-]*$"

Money = Annotated[Decimal, Field(ge=0, lt=10**15, decimal_places=12)]
"""A non-negative amount in the major unit of a currency (``"2.50"`` = 2.50 USD), below
10^15 (a typo such as ``1e400`` is an error here, not an overflow in an invoice)."""


def _iso_currency(value: str) -> str:
    """An ISO 4217 code with a minor unit (what an invoice can be rounded to)."""
    try:
        exponent = Currency(value).exponent
    except ValueError:
        upper = value.strip().upper()
        hint = f"; did you mean {upper!r}?" if upper in Currency.__members__ else ""
        raise ValueError(
            f"{value!r} is not an ISO 4217 currency code{hint or ' (e.g. USD, EUR, JPY)'}"
        ) from None
    if exponent is None:
        raise ValueError(f"{value!r} has no minor unit in ISO 4217: invoices cannot be in it")
    return value


CurrencyCode = Annotated[str, AfterValidator(_iso_currency)]
"""An ISO 4217 code such as ``USD``; unknown codes and codes without a minor unit
(``XAU``, ``XXX``) are refused, so ``invoice preview`` never meets one."""


@dataclass(frozen=True)
class Accepts:
    """On a union type (``Annotated[int | Literal["unlimited"], Accepts(...)]``): a wrong
    value is one error, ``Input should be <what>``, at the field's own path.

    Left alone, pydantic reports one error per member of the union, each under its internal
    name (``limit.constrained-int: ...`` and ``limit.literal['unlimited']: ...``): two
    lines for one problem, naming no field a catalog has. Every plain union in the
    catalog carries this (``tests/meterline/test_catalog_unions.py`` holds them to it).
    """

    what: str
    """What the field takes, e.g. ``an integer >= 0 or "unlimited"``."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        schema = handler(source)
        if schema["type"] != "union":
            raise TypeError(f"Accepts is for union types, not {source!r}")
        return {
            **schema,
            "custom_error_type": "union_accepts",
            "custom_error_message": f"Input should be {self.what}",
        }


class CatalogError(ValueError):
    """A catalog that cannot be used; ``str()`` is one readable message per problem."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ISO_DURATION_RE = re.compile(
    r"^P(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?$"
)


def _iso_duration(value: str) -> str:
    m = ISO_DURATION_RE.match(value)
    if not m or not any(m.groupdict().values()) or value == "P":
        raise ValueError(f"{value!r} is not an ISO-8601 duration such as P1M, P1W or P1Y")
    # Every part zero (P0D, P0M, P0Y0D): the groups hold the text "0", which is truthy.
    if not any(int(v) for v in m.groupdict().values() if v is not None):
        raise ValueError(f"{value!r} is zero long: a period needs at least one day, e.g. P1D")
    return value
