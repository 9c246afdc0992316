"""Which events a feature's ``service_tier`` filter counts: the one statement of the rule.

An event's ``service_tier`` is the tier the provider says served the call, as it spells
it (OpenAI ``default``, ``flex``, ``priority``, ``scale``; Anthropic ``standard``,
``priority``, ``batch``; Groq ``on_demand``...), or NULL when the response named none.
A feature's ``meter.service_tier`` is a case-insensitive glob, like its ``model``:

- no filter (``None``) counts every event, whatever its tier, NULL included;
- a filter counts an event whose tier it matches;
- an event with no tier (NULL) is one the standard tier served (a provider that does not
  report tiers sells only that one; events stored before tiers were recorded): a filter
  counts it when it matches one of :data:`STANDARD_TIERS`, ``default`` (OpenAI's name
  for it) or ``standard`` (Anthropic's). ``*`` and ``default`` count it; ``flex`` does not.

The catalog, billing (invoices, the usage report, ``invoice explain``), the proxy's
governance counters and the dashboard all ask :func:`tier_matches`.
"""

from __future__ import annotations

import fnmatch

#: The names providers give their standard tier: what an event without a tier matches as.
STANDARD_TIERS: tuple[str, ...] = ("default", "standard")


def tier_matches(pattern: str | None, tier: str | None) -> bool:
    """Whether a feature filtering on ``pattern`` (``None``: no filter) counts an event
    served at ``tier`` (``None``: not reported)."""
    if pattern is None:
        return True
    glob = pattern.lower()
    if tier is None:
        return any(fnmatch.fnmatchcase(name, glob) for name in STANDARD_TIERS)
    return fnmatch.fnmatchcase(tier.lower(), glob)
