"""Which events a feature's ``service_tier`` filter counts: the one statement of the rule.

An event's ``service_tier`` is the tier the provider says served the call, as it spells
it (OpenAI ``default``, ``flex``, ``priority``, ``scale``; Anthropic ``standard``,
``priority``, ``batch``; Groq ``on_demand``...), or NULL when the response named none.
A feature's ``meter.service_tier`` is a list of tier names (one name alone reads as a
list of one), matched case-insensitively:

- no filter (``None``) counts every event, whatever its tier, NULL included;
- a filter counts an event whose tier it names;
- an event with no tier (NULL) is one the standard tier served (a provider that does not
  report tiers sells only that one; events stored before tiers were recorded): a filter
  counts it when it names one of :data:`STANDARD_TIERS`, ``default`` (OpenAI's name for
  it) or ``standard`` (Anthropic's).

Names, not globs: with globs, ``"[ps]*"`` (meant for priority and scale) also matched
``standard`` and so counted every untiered event a ``default`` feature counted, billing
it twice. A name list is exact: only a filter that names the standard tier counts NULL.

The rule is the one of every way a call is served (speed and inference geography too):
:mod:`meterline.served` states it; :func:`tier_matches` is its tier part.
"""

from __future__ import annotations

from collections.abc import Collection

from meterline.served import STANDARD, names_match

#: The names providers give their standard tier: what an event without a tier matches as.
STANDARD_TIERS: tuple[str, ...] = STANDARD["service_tier"]

#: The tiers providers document (OpenAI ``default``, ``flex``, ``priority`` or ``fast``,
#: ``ultrafast``, ``scale``;
#: Anthropic ``standard``, ``priority``; Groq ``on_demand``, ``flex``): a request asking for
#: one of them may be checked at that tier only; any other name asks for none.
REQUESTABLE_TIERS = frozenset(
    {"default", "flex", "priority", "fast", "ultrafast", "scale", "standard", "on_demand"}
)


def tier_matches(names: Collection[str] | None, tier: str | None) -> bool:
    """Whether a feature filtering on the tier ``names`` (lower case; ``None``: no filter)
    counts an event served at ``tier`` (``None``: not reported)."""
    return names_match("service_tier", names, tier)
