"""One model name per provider model: what the event stores in ``model``.

Catalog feature globs (``gemini-2.5-pro*``) match this name, so each provider's way of
spelling the same model must come out the same. The rules, per flavor:

- ``gemini``: the resource path is dropped: ``models/gemini-2.5-pro`` (``modelVersion``
  as some Gemini API versions report it), ``tunedModels/x``,
  ``publishers/google/models/gemini-2.5-pro`` and
  ``projects/p/locations/l/publishers/google/models/gemini-2.5-pro`` (Vertex AI) all give
  ``gemini-2.5-pro``: the name the Gemini API documents and prices.
- ``openai`` and ``anthropic``: kept as reported (``gpt-4o-2024-08-06``,
  ``claude-sonnet-4-5-20250929``). The OpenAI-compatible routers name models with a
  vendor prefix (OpenRouter ``openai/gpt-5-mini``, Groq ``groq/compound``) that is part
  of the id they price, so it stays.

Every flavor: surrounding whitespace is dropped; an empty name is no name.
"""

from __future__ import annotations

import re

#: The last ``models/`` (or ``tunedModels/``) segment of a Gemini resource name.
_GEMINI_RESOURCE = re.compile(r"^(?:.*/)?(?:models|tunedModels)/(?P<name>[^/]+)$")


def normalise_model(flavor: str, name: str | None) -> str | None:
    """The model name stored for ``name`` as reported by a ``flavor`` provider."""
    if name is None:
        return None
    name = name.strip()
    if not name:
        return None
    if flavor == "gemini":
        match = _GEMINI_RESOURCE.match(name)
        if match:
            return match.group("name")
    return name
