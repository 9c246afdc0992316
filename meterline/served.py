"""How a call was served, and which events a feature's filters on it count: the one rule.

A provider bills some calls at a multiple of their model's rates and says so in the
response. Each such modifier is an event column, the value as the provider spells it, or
NULL when the response named none:

- ``service_tier``: OpenAI ``default``, ``flex``, ``priority``, ``scale``; Anthropic
  ``standard``, ``priority``, ``batch``; Groq ``on_demand``... (:mod:`meterline.servicetiers`);
- ``speed``: Anthropic's ``usage.speed``, ``fast`` or ``standard``, the speed the call ran
  at (fast mode bills every rate, cache rates included, at a multiple: 6x on Opus 4.6; a
  fast request that fell back to standard says ``standard`` and is billed so);
- ``inference_geo``: Anthropic's ``usage.inference_geo``, ``us`` or ``global`` where the
  call ran (US-only inference bills every token category at 1.1x on Opus 4.6 and later),
  ``not_available`` on models that offer no choice.

A feature's ``meter`` may filter each with a list of names (one name alone reads as a list
of one), matched case-insensitively; names, not globs, but a tier's other name is the
same tier (:data:`ALIASES`: OpenAI's ``fast`` is its ``priority``). For each modifier:

- no filter (``None``) counts every event, NULL included;
- a filter counts an event whose value it names;
- an event with no value (NULL: the provider reports none, events stored before the column
  existed; or ``not_available``: the model offers no choice) was served the standard way:
  a filter counts it when it names one of the modifier's :data:`STANDARD` names
  (``default`` or ``standard`` for tiers, ``standard`` for speed, ``global`` for geo).

An event counts where every filter counts it (the modifiers stack: a fast call run in
the US is counted by a ``speed: fast`` feature, by an ``inference_geo: us`` feature, and by
one that names both). Invoices, ``invoice explain``, ``billing usage --unbilled``,
statements, the dashboard and the proxy's limits all ask :meth:`ServedFilter.counts`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, NamedTuple

#: The event columns naming how a call was served, in the order of :class:`Served`.
SERVED_COLUMNS: tuple[str, ...] = ("service_tier", "speed", "inference_geo")


def served_sql(alias: str = "e") -> str:
    """The columns of ``usage_events AS <alias>`` for a SELECT or GROUP BY list."""
    return ", ".join(f"{alias}.{c}" for c in SERVED_COLUMNS)


#: :func:`served_sql` of ``usage_events AS e``.
SERVED_SQL = served_sql()

#: Per column, the names of the standard way: what an event without a value counts as.
STANDARD: Mapping[str, tuple[str, ...]] = {
    "service_tier": ("default", "standard"),
    "speed": ("standard",),
    "inference_geo": ("global",),
}

#: Values that say no choice applied (Anthropic's ``inference_geo: not_available`` on
#: older models): counted like NULL, as the standard way.
NOT_APPLIED: frozenset[str] = frozenset({"not_available"})


#: Names one provider gives one tier: OpenAI renamed priority processing "Fast mode" on
#: 30 July 2026 and takes ``service_tier: "fast"`` and ``"priority"`` alike (so does
#: OpenRouter), so a filter naming either counts both, asked or served.
ALIASES: Mapping[str, Mapping[str, str]] = {"service_tier": {"fast": "priority"}}


def canonical(column: str, value: str) -> str:
    """``value`` (lower case) as the rule compares it: an alias read as its tier."""
    return ALIASES.get(column, {}).get(value, value)


class Served(NamedTuple):
    """How one event's call was served (``None``: not reported)."""

    service_tier: str | None = None
    speed: str | None = None
    inference_geo: str | None = None


def names_match(column: str, names: Collection[str] | None, value: str | None) -> bool:
    """Whether a filter on ``column`` naming ``names`` (lower case; ``None``: no filter)
    counts an event whose ``column`` is ``value`` (``None``: not reported)."""
    if names is None:
        return True
    if value is None or value.lower() in NOT_APPLIED:
        return any(name in names for name in STANDARD[column])
    value = canonical(column, value.lower())
    return value in names or any(canonical(column, name) == value for name in names)


class ServedFilter(NamedTuple):
    """A feature meter's filters on how calls were served (``None``: no filter); hashable."""

    service_tier: tuple[str, ...] | None = None
    speed: tuple[str, ...] | None = None
    inference_geo: tuple[str, ...] | None = None

    def counts(self, served: Served) -> bool:
        """Whether an event served as ``served`` counts here (every filter counts it)."""
        return all(
            names_match(column, names, value)
            for column, names, value in zip(SERVED_COLUMNS, self, served, strict=True)
        )

    def snapshot(self) -> dict[str, list[str]]:
        """The filters set, as a usage line stores them in ``detail.meter``."""
        return {c: list(names) for c, names in zip(SERVED_COLUMNS, self, strict=True) if names}

    @classmethod
    def from_snapshot(cls, meter: Mapping[str, Any]) -> ServedFilter:
        """The filters a line stored (absent: none; lines stored before a column existed)."""
        return cls(*(_names(meter.get(column)) for column in SERVED_COLUMNS))


def _names(stored: str | list[str] | None) -> tuple[str, ...] | None:
    """A stored filter: a list of names (a name alone: a list of one)."""
    if stored is None:
        return None
    return (stored,) if isinstance(stored, str) else tuple(stored)
