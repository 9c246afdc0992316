"""What a request may cost, read cheaply before it is forwarded: model and token bounds.

No JSON parse (a request body can be megabytes): ``bytes.find`` for the top-level keys
the providers define, then a few bytes of scanning after each. Used only for governed
consumers.

- input: ``ceil(body bytes / BYTES_PER_TOKEN)``, an estimate (English text and JSON run
  at about 4 bytes per token; images and dense scripts differ: the call settles to the
  metered figure when it ends).
- output: ``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens`` /
  ``maxOutputTokens`` when the request sets one (providers never exceed it), else the
  model's largest output where :data:`MAX_OUTPUT` knows the model (the provider cannot
  exceed that either), else :data:`DEFAULT_OUTPUT_RESERVE`, which is *not* a bound: such a
  call can use more than it reserved (docs/governance.md states the resulting worst case).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

BYTES_PER_TOKEN = 4
DEFAULT_OUTPUT_RESERVE = 4096
"""Output tokens reserved when neither the request nor :data:`MAX_OUTPUT` bounds them."""

MAX_OUTPUT: tuple[tuple[str, int], ...] = (
    ("gpt-5-pro", 272_000),
    ("gpt-5", 128_000),
    ("gpt-4.5", 16_384),
    ("gpt-4.1", 32_768),
    ("gpt-4o", 16_384),
    ("chatgpt-4o", 16_384),
    ("gpt-4-turbo", 4_096),
    ("gpt-4", 8_192),
    ("gpt-3.5-turbo", 4_096),
    ("o1-mini", 65_536),
    ("o1", 100_000),
    ("o3", 100_000),
    ("o4-mini", 100_000),
    ("claude", 128_000),  # the largest any Claude model gives (3.7 Sonnet with its beta header)
    ("gemini-1.5", 8_192),
    ("gemini-2.0", 8_192),
    ("gemini-2.5", 65_536),
    ("gemini-3", 65_536),
)
"""The most output tokens a model can produce in one call, by model-name prefix (the
longest prefix that matches wins; a router's ``vendor/`` prefix is ignored), from the
providers' model pages. A call that sets no output bound reserves this much."""

_OUTPUT_KEYS = (
    b'"max_tokens"',
    b'"max_completion_tokens"',
    b'"max_output_tokens"',
    b'"maxOutputTokens"',
)
_GEMINI_MODEL = re.compile(r"/models/([^/:?]+)")


class Estimate(NamedTuple):
    model: str
    input: int
    output: int


def _value_start(body: bytes, key: bytes) -> int:
    """Index just after ``key\\s*:\\s*`` for the first occurrence used as a key, or -1."""
    start = 0
    n = len(body)
    while True:
        i = body.find(key, start)
        if i < 0:
            return -1
        j = i + len(key)
        while j < n and body[j] in b" \t\r\n":
            j += 1
        if j < n and body[j] == 58:  # ':'
            j += 1
            while j < n and body[j] in b" \t\r\n":
                j += 1
            return j
        start = j


def _int_value(body: bytes, key: bytes) -> int | None:
    j = _value_start(body, key)
    if j < 0:
        return None
    k = j
    while k < len(body) and 48 <= body[k] <= 57:
        k += 1
    return int(body[j:k]) if k > j and k - j < 10 else None


def _model(body: bytes) -> str:
    j = _value_start(body, b'"model"')
    if j < 0 or j >= len(body) or body[j] != 34:  # '"'
        return ""
    k = body.find(b'"', j + 1)
    return body[j + 1 : k].decode("utf-8", "replace") if k > 0 and k - j < 200 else ""


@lru_cache(maxsize=1024)
def max_output(model: str) -> int | None:
    """:data:`MAX_OUTPUT` of ``model`` (``gpt-4o-2024-08-06``, ``openai/gpt-4o``), or None."""
    name = model.rpartition("/")[2].lower()
    found = [(len(p), n) for p, n in MAX_OUTPUT if name.startswith(p)]
    return max(found)[1] if found else None


def estimate_request(flavor: str, path: str, body: bytes) -> Estimate:
    if flavor == "gemini":
        m = _GEMINI_MODEL.search(path)
        model = m.group(1) if m else ""
    else:
        model = _model(body)
    output = None
    for key in _OUTPUT_KEYS:
        output = _int_value(body, key)
        if output is not None:
            break
    if output is None:
        output = max_output(model) or DEFAULT_OUTPUT_RESERVE
    return Estimate(model, -(-len(body) // BYTES_PER_TOKEN), output)
