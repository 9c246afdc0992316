"""Which paths on a provider's API bill tokens, and in which API's format they are read.

Both halves read it: the proxy meters the calls to these paths, and the catalog refuses a
gateway route whose upstream path is none of them (:mod:`meterline.routecheck`), so
``billing catalog check`` and the proxy's start agree on it.
"""

from __future__ import annotations

import re

from meterline.providers import Flavor
from meterline.urlpaths import normalise_path

# Paths that bill tokens, per flavor, matched on the path without its query string.
# OpenAI-compatible APIs hang the same endpoints under different prefixes
# (/v1, /openai/v1, /api/v1, /inference/v1, Azure's /openai/deployments/<name>).
_BILLED_PATHS: dict[str, re.Pattern[str]] = {
    "openai": re.compile(
        r"/(?:chat/completions|completions|embeddings|responses|responses/compact)/?$"
        r"|^/api/(?:chat|generate|embed)/?$"  # Ollama's native API (eval counts)
    ),
    "anthropic": re.compile(r"/v1/messages/?$"),
    "gemini": re.compile(
        r"/(?:models|tunedModels)/[^/:]+:(?:generateContent|streamGenerateContent)$"
    ),
}
#: Google's OpenAI-compatible endpoints on a Gemini host (``/v1beta/openai/...``): OpenAI's
#: request and response format, the Gemini key as ``Authorization: Bearer``.
_GEMINI_OPENAI_PATHS = re.compile(r"/openai/(?:chat/completions|embeddings)/?$")
#: Anthropic's Messages API served by an OpenAI-flavor host, under at most one prefix:
#: Claude on Azure AI Foundry (``anthropic.AnthropicFoundry``, ``/anthropic/v1/messages``),
#: DeepSeek's ``/anthropic/v1/messages``, OpenRouter's ``/api/v1/messages`` (Claude Code
#: with ``ANTHROPIC_BASE_URL=https://openrouter.ai/api``), vLLM's and Ollama's
#: ``/v1/messages``. OpenAI itself has no such path (its threads' messages are
#: ``/v1/threads/<id>/messages``).
_ANTHROPIC_COMPATIBLE = re.compile(r"^(?:/[A-Za-z0-9_.~-]+)?/v1/messages/?$")
#: Anthropic's OpenAI SDK compatibility endpoint (``base_url=https://api.anthropic.com/v1/``):
#: OpenAI's request and response format; the Anthropic key read as Anthropic's servers
#: read it, ``x-api-key`` first, then ``Authorization: Bearer`` (the openai SDK's).
_ANTHROPIC_OPENAI_PATHS = re.compile(r"^/v1/chat/completions/?$")
#: A Responses API response read back: ``GET .../responses/<id>`` (polled, or its stream
#: resumed with ``?stream=true``) and ``POST .../responses/<id>/cancel``. Billed only when
#: the body shows a background response that has ended (:mod:`addons.metering.background`);
#: not ``.../responses/<id>/input_items`` (a listing) nor ``input_tokens`` (a free count).
_RESPONSE_READ = re.compile(r"/responses/(?!compact/?$|input_tokens/?$)[^/]+/?$")
_RESPONSE_CANCEL = re.compile(r"/responses/[^/]+/cancel/?$")


def is_billed_path(flavor: Flavor, path: str) -> bool:
    """True when ``path`` (query string allowed) is an endpoint that bills tokens.

    The path is normalised first (:func:`normalise_path`): spelling it differently
    (``complet%69ons``, ``/v1//chat/./completions``) reaches the same upstream endpoint
    and is metered the same.
    """
    return billed_flavor(flavor, path) is not None


def billed_flavor(flavor: Flavor, path: str, method: str = "POST") -> Flavor | None:
    """The API format ``method path`` speaks on a provider of ``flavor`` when it bills
    tokens (None: it does not). The provider's own, except on another API's compatible
    endpoint (Gemini's and Anthropic's OpenAI-compatible ones, Anthropic's Messages API on
    an OpenAI-flavor host). Calls are POSTs, but for a Responses API response read back (GET)."""
    path = normalise_path(path)
    if method != "POST":
        if method == "GET" and flavor == "openai" and _RESPONSE_READ.search(path):
            return flavor
        return None
    if _BILLED_PATHS[flavor].search(path) is not None:
        return flavor
    if flavor == "openai" and _RESPONSE_CANCEL.search(path) is not None:
        return flavor
    if flavor == "gemini" and _GEMINI_OPENAI_PATHS.search(path) is not None:
        return "openai"
    if flavor == "openai" and _ANTHROPIC_COMPATIBLE.search(path) is not None:
        return "anthropic"
    if flavor == "anthropic" and _ANTHROPIC_OPENAI_PATHS.search(path) is not None:
        return "openai"
    return None
