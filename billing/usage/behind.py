"""The events behind one invoice line: those a line's token filter counts, with quantities."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from billing.storevalues import from_db
from billing.usage.windows import WINDOWED_EVENTS, UsageWindow, load_windows
from meterline.catalog import FeatureMeter
from meterline.eventschema import TOKEN_COLUMNS
from meterline.served import SERVED_SQL, Served, ServedFilter


@dataclass(frozen=True)
class TokenFilter:
    """The tokens a usage line counts: provider, case-insensitive model glob, token types,
    and the service tier, speed and geography names it counts (``served``: none, every
    event).

    A hashable copy of a feature's ``meter`` (``meterline.catalog.FeatureMeter``) as the
    line was priced: built from the catalog, or from the snapshot stored on the line.
    """

    provider: str | None
    model: str
    token_types: tuple[str, ...]
    served: ServedFilter = ServedFilter()

    @classmethod
    def of(cls, meter: FeatureMeter) -> TokenFilter:
        return cls(meter.provider, meter.model, tuple(meter.token_types), meter.served)

    @classmethod
    def from_snapshot(cls, meter: dict[str, Any]) -> TokenFilter:
        """The filter a line stored (``detail.meter``): no ``service_tier``, ``speed`` or
        ``inference_geo``, no filter on it (lines stored before it existed)."""
        return cls(
            meter["provider"],
            meter["model"],
            tuple(meter["token_types"]),
            ServedFilter.from_snapshot(meter),
        )

    def model_matches(self, model: str) -> bool:
        return fnmatch.fnmatchcase(model.lower(), self.model.lower())

    def served_matches(self, served: Served) -> bool:
        """The rule of :mod:`meterline.served` (``None`` values: not reported)."""
        return self.served.counts(served)

    def matches(self, provider: str, model: str, served: Served) -> bool:
        return (
            (self.provider is None or self.provider == provider)
            and self.model_matches(model)
            and self.served_matches(served)
        )


EVENT_FIELDS = (
    "event_id",
    "ts",
    "ingested_at",
    "consumer",
    "provider",
    "model",
    "response_id",
    "request_id",
    *TOKEN_COLUMNS.values(),
)


def events_behind(
    con: duckdb.DuckDBPyConnection, windows: Sequence[UsageWindow], meter: TokenFilter
) -> list[dict[str, object]]:
    """The events a line counted, each with ``quantity`` = its tokens of the meter's types.

    Only events with a quantity above zero: an event of a matching model that has none of
    the meter's token types (an input-only call under an output meter) is not behind it.

    Model globs are matched in Python with the same rule as the catalog (``fnmatch`` on
    lowercased names): the distinct models in the windows are few, the events many.
    """
    if not windows:
        return []
    load_windows(con, windows)
    provider_sql = "AND e.provider = ?" if meter.provider is not None else ""
    params: list[object] = [meter.provider] if meter.provider is not None else []
    base = f"{WINDOWED_EVENTS} WHERE TRUE {provider_sql}"
    models = [
        m
        for (m,) in con.execute(f"SELECT DISTINCT coalesce(e.model, '') {base}", params).fetchall()
        if meter.model_matches(m)
    ]
    if not models:
        return []
    quantity = " + ".join(f"e.{TOKEN_COLUMNS[t]}" for t in meter.token_types)
    cols = ", ".join(f"e.{c}" for c in EVENT_FIELDS)
    rows = con.execute(
        f"SELECT {cols}, ({quantity})::BIGINT AS quantity, {SERVED_SQL} {base} "
        f"AND list_contains(?, coalesce(e.model, '')) AND ({quantity}) > 0 "
        "ORDER BY e.ts, e.event_id",
        [*params, models],
    ).fetchall()
    out = []
    n = len(EVENT_FIELDS) + 1
    for r in rows:
        if not meter.served_matches(Served(*r[n:])):
            continue
        event = dict(zip((*EVENT_FIELDS, "quantity"), r[:n], strict=True))
        event["ts"] = from_db(event["ts"])  # type: ignore[arg-type]
        event["ingested_at"] = from_db(event["ingested_at"])  # type: ignore[arg-type]
        out.append(event)
    return out
