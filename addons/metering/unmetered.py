"""Say once when a provider bills a call that the proxy does not meter.

Calls on a provider's paths that bill by other units or protocols (audio, images,
Realtime over WebRTC or SIP, batch jobs, fine-tuning, Gemini's embedContent and context
cache storage, Anthropic's message batches, Mistral's conversations) pass through
unmetered (docs/proxy.md, "Providers"): agents that use them are not billed for them.
That used to happen with no line in the log at all. Now the first such call of each
provider and kind logs one warning naming the path (never its query string, which may
hold a key); later ones cost one set lookup (this runs for every unmetered call to a
provider, in ``requestheaders``).
"""

from __future__ import annotations

import logging
import re

from addons.metering.providers import MeteredProvider, normalise_path

#: (path pattern, kind, methods: None for POST, empty for any) per flavor: endpoints the
#: provider bills that the proxy does not meter.
_BILLED_ELSEWHERE: dict[str, tuple[tuple[re.Pattern[str], str, frozenset[str] | None], ...]] = {
    "openai": (
        (re.compile(r"/audio/(?:transcriptions|translations|speech)/?$"), "audio", None),
        (re.compile(r"/images/(?:generations|edits|variations)/?$"), "images", None),
        # Realtime calls over SIP or WebRTC (the session itself, a WebSocket, is metered).
        (re.compile(r"/realtime/calls/?$"), "Realtime calls", None),
        (re.compile(r"/batches/?$"), "batch jobs", None),
        (re.compile(r"/videos(?:/[^/]+/remix)?/?$"), "videos", None),
        (re.compile(r"/fine_tuning/jobs/?$"), "fine-tuning", None),
    ),
    "anthropic": ((re.compile(r"/v1/messages/batches/?$"), "message batches", None),),
    "gemini": (
        (re.compile(r":(?:embedContent|batchEmbedContents)$"), "embeddings", None),
        (re.compile(r":batchGenerateContent$"), "batch jobs", None),
        (re.compile(r":(?:predict|predictLongRunning)$"), "image and video generation", None),
        (re.compile(r"/cachedContents/?$"), "context cache storage", None),
    ),
}
#: The same, for one provider's own endpoints on a shared flavor (OpenAI's own
#: ``/v1/conversations`` stores items for free; Mistral's runs the model and bills it).
_BILLED_ELSEWHERE_BY_NAME: dict[
    str, tuple[tuple[re.Pattern[str], str, frozenset[str] | None], ...]
] = {
    "mistral": (
        (re.compile(r"/v1/conversations(?:/[^/]+(?:/restart)?)?/?$"), "conversations", None),
    ),
}
_POST = frozenset({"POST"})
#: Distinct (provider, method, path) remembered; past it the memo starts again.
MAX_SEEN = 4096


def billed_kind(flavor: str, method: str, path: str, name: str = "") -> str | None:
    """The kind of call the provider (of ``flavor``, named ``name``) bills at ``method
    path`` that is not metered, or None.

    Methods: POST unless the pattern says otherwise."""
    path = normalise_path(path)
    kinds = (*_BILLED_ELSEWHERE.get(flavor, ()), *_BILLED_ELSEWHERE_BY_NAME.get(name, ()))
    for pattern, kind, methods in kinds:
        allowed = _POST if methods is None else methods
        if (not allowed or method in allowed) and pattern.search(path):
            return kind
    return None


class UnmeteredLog:
    """Logs the first unmetered billed call of each (provider, kind)."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self._seen: set[tuple[str, str, str]] = set()
        self._told: set[tuple[str, str]] = set()

    def note(self, provider: MeteredProvider, method: str, path: str) -> None:
        if "?" in path:
            path = path.partition("?")[0]  # the query may hold a key: never kept or logged
        key = (provider.name, method, path)
        if key in self._seen:
            return
        if len(self._seen) >= MAX_SEEN:
            self._seen.clear()
        self._seen.add(key)
        kind = billed_kind(provider.flavor, method, path, provider.name)
        if kind is None or (provider.name, kind) in self._told:
            return
        self._told.add((provider.name, kind))
        self.log.warning(
            "meterline: %s %s %s is billed by the provider but not metered (%s): calls "
            "of this kind pass through unbilled; what is metered: docs/proxy.md, "
            '"Providers" (logged once per provider and kind)',
            provider.name,
            method,
            normalise_path(path)[:200],
            kind,
        )
