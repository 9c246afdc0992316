"""What a request may cost, read cheaply before it is forwarded: model and token bounds.

Only the request's own keys count: ``max_tokens`` at the top level, not one nested in a
message (an Anthropic ``tool_use`` input in the history, a tool's JSON schema), which
used to replace the real bound (10 calls admitted at a limit of 2,000, 20,000 used).
The common case parses nothing (a request body can be megabytes): ``bytes.find`` for the
key; when it occurs once, whether it sits at the top level is decided by parsing the
shorter side of the body around it (:func:`_at_depth`, usually a few bytes). Only a key
that occurs more than once (or a body the shortcut cannot read) is parsed whole. Used
only for governed consumers.

- input: ``ceil(body bytes / BYTES_PER_TOKEN)``, an estimate (English text and JSON run
  at about 4 bytes per token; images and dense scripts differ: the call settles to the
  metered figure when it ends).
- output: ``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens`` /
  ``maxOutputTokens`` / Ollama's ``options.num_predict`` when the request sets one
  (providers never exceed it), else the model's largest output where :data:`MAX_OUTPUT`
  knows the model (the provider cannot exceed that either), else
  :data:`DEFAULT_OUTPUT_RESERVE`, which is *not* a bound: such a call can use more than it
  reserved (docs/governance.md states the resulting worst case). The bound is per answer:
  a call asking for several (OpenAI's ``n``, the legacy completions' ``best_of`` and prompt
  lists, Gemini's ``candidateCount``) reserves it once per answer (:func:`answers`). An
  embeddings call produces no output and reserves none.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any, NamedTuple

import orjson

from addons.metering import jsoncodec
from addons.metering.providers import normalise_path

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

_CHAT_KEYS = ("max_tokens", "max_completion_tokens")
"""The output bounds of OpenAI's chat and legacy completions, and of Anthropic's Messages
(``max_tokens``): a server honours either, so the larger counts."""
_RESPONSES_KEYS = ("max_output_tokens",)
"""The Responses API's only bound (it ignores ``max_tokens``)."""
_RESPONSES = re.compile(r"/responses(?:/compact)?/?$")
_OLLAMA_NATIVE = re.compile(r"^/api/(?:chat|generate)/?$")
"""Ollama's native API: bounded by ``options.num_predict`` only (its OpenAI-compatible
``/v1`` endpoints, vLLM and routers ignore that key: a body naming it with a small value
reserved 1 token for answers of 500 and let ten calls past a limit of 1,000)."""
_GEMINI_CONFIGS = (b'"generationConfig"', b'"generation_config"')
_GEMINI_KEYS = (b'"maxOutputTokens"', b'"max_output_tokens"')
"""Gemini's bound sits in ``generationConfig`` (either spelling, as its JSON accepts)."""
_GEMINI_MODEL = re.compile(r"/(?:models|tunedModels)/([^/:?]+)")
_EMBEDDINGS = re.compile(r"/(?:embeddings|api/embed)/?(?:\?|$)")
"""Paths whose calls produce no output tokens (OpenAI-style embeddings, Ollama's)."""
_LEGACY_COMPLETIONS = re.compile(r"(?<!/chat)/completions/?(?:\?|$)")
_MANY_ANSWERS = (b'"n"', b'"best_of"', b'"candidateCount"', b'"candidate_count"')
"""Keys that ask for several answers in one call (each billed): read by a full parse."""
_PROMPT_LIST = re.compile(rb'"prompt"\s*:\s*\[')
_NUM_PREDICT = b'"num_predict"'
"""Ollama's output bound, in ``options``: read by a full parse."""
MAX_ANSWERS = 128
"""The most answers one call is taken to ask for (OpenAI caps ``n`` at 128)."""
_DEPLOYMENT = re.compile(r"/deployments/([^/?]+)/")
"""Azure OpenAI names the deployment in the path; the body's ``model`` is optional."""
_WS = b" \t\r\n"
_ESCAPED_ASCII = re.compile(rb"\\u00[4-7][0-9a-fA-F]")
"""An escape spelling an ASCII letter or ``_`` (``mod\u0065l``): a key name may be hidden
in it (non-ASCII text escapes as ``\u00a0`` and up, Go's ``<`` as ``\u003c``: no match)."""
_MAX_INT_DIGITS = 9
_REREAD = object()
"""The shortcut cannot tell: parse the whole body."""


class Estimate(NamedTuple):
    model: str
    input: int
    output: int
    searches: int = 0
    """Server-side web searches the call may run (:func:`search_bound`)."""


DEFAULT_SEARCH_RESERVE = 5
"""Searches reserved for a web search tool that sets no ``max_uses`` (Anthropic's cap on
one call's searches; OpenAI's and xAI's tools have none): an estimate, not a bound."""
_SEARCH_TOOL = b'"web_search'


def search_bound(flavor: str, body: bytes) -> int:
    """The web searches a call may run: the sum over its top-level ``tools`` of type
    ``web_search*`` of Anthropic's ``max_uses``, else :data:`DEFAULT_SEARCH_RESERVE`; for
    OpenAI's Responses API, its ``max_tool_calls`` when set (a cap on all the built-in
    tool calls of the response: a bound). Read only when the body names such a tool (a
    full parse of those rare bodies)."""
    if _SEARCH_TOOL not in body:
        return 0
    try:
        data = jsoncodec.loads(body)
    except ValueError:
        return 0
    if not isinstance(data, dict):
        return 0
    tools = data.get("tools")
    total = 0
    for tool in tools if isinstance(tools, list) else ():
        kind = tool.get("type") if isinstance(tool, dict) else None
        if not (isinstance(kind, str) and kind.startswith("web_search")):
            continue
        cap = _whole(tool.get("max_uses")) if flavor == "anthropic" else None
        total += cap if cap is not None else DEFAULT_SEARCH_RESERVE
    calls = _whole(data.get("max_tool_calls")) if flavor == "openai" else None
    return total if calls is None or not total else calls


def _keys(body: bytes, key: bytes, start: int, stop: int) -> tuple[int, int] | None:
    """(index of ``key``, index of its value) for its first use as an object key in
    ``body[start:stop]``, or None. A quote preceded by a backslash is inside a string."""
    while True:
        i = body.find(key, start, stop)
        if i < 0:
            return None
        j = i + len(key)
        start = j
        if i and body[i - 1] == 92:  # '\\': an escaped quote, part of a string
            continue
        while j < stop and body[j] in _WS:
            j += 1
        if j < stop and body[j] == 58:  # ':'
            j += 1
            while j < stop and body[j] in _WS:
                j += 1
            return i, j


def _parses(probe: bytes) -> bool:
    try:
        orjson.loads(probe)
    except orjson.JSONDecodeError:
        return False
    return True


def _at_depth(body: bytes, i: int, end: int, depth: int) -> bool:
    """Whether the key at ``i`` (its value ending at ``end``) is a member of an object
    ``depth`` objects deep (1: the top-level object), in a valid JSON body.

    Exact, by parsing the shorter side only: the body up to the key, closed by ``depth``
    braces, is a valid document only at that depth; so is the rest after the value,
    opened by ``depth`` objects."""
    if i <= len(body) - end:
        return _parses(body[:i] + b'"":0' + b"}" * depth)
    return _parses(b'{"":' * (depth - 1) + b'{"":0' + body[end:])


def _int_end(body: bytes, j: int) -> int:
    """The end of a JSON integer at ``j`` (``j`` when there is none)."""
    k = j
    n = len(body)
    while k < n and 48 <= body[k] <= 57:
        k += 1
    return k


def _first(body: bytes, key: bytes, start: int = 0, stop: int | None = None) -> Any:
    """(key index, value index) of ``key``'s only use as a key, None when it is not
    used as one, or :data:`_REREAD` when it is used more than once."""
    stop = len(body) if stop is None else stop
    found = _keys(body, key, start, stop)
    if found is None:
        return None
    if _keys(body, key, found[1], stop) is not None:
        return _REREAD
    return found


def _top_string(body: bytes, key: bytes = b'"model"') -> Any:
    """The top-level string member ``key`` ("" when there is none, or it is not a
    string), or :data:`_REREAD` when the shortcut cannot tell."""
    found = _first(body, key)
    if found is None or found is _REREAD:
        return "" if found is None else _REREAD
    i, j = found
    if j >= len(body) or body[j] != 34:  # not a string: no usable model
        return "" if _at_depth(body, i, j, 1) else _REREAD
    k = body.find(b'"', j + 1, j + 201)
    if k < 0 or body[k - 1] == 92:  # long, or escaped: read it properly
        return _REREAD
    if not _at_depth(body, i, k + 1, 1):
        return _REREAD  # nested only, or hidden in a string: the full parse decides
    return body[j + 1 : k].decode("utf-8", "replace")


def output_keys(flavor: str, path: str) -> tuple[str, ...]:
    """The top-level keys that bound a call's output on the endpoint at ``path`` (only
    those its server honours: a key it ignores would reserve a bound it does not keep)."""
    path = path.partition("?")[0]  # normalised by the caller (decoded once, as servers do)
    if flavor == "openai" and _RESPONSES.search(path):
        return _RESPONSES_KEYS
    if flavor == "openai" and _OLLAMA_NATIVE.match(path):
        return ()  # options.num_predict, read by the full parse
    return _CHAT_KEYS


def _top_bound(body: bytes, keys: tuple[str, ...]) -> Any:
    """The top-level output bound (None when the request sets none), or :data:`_REREAD`.

    With several bounds set (``max_tokens`` and ``max_completion_tokens``), the largest:
    servers differ in which one they honour."""
    return _bound(body, tuple(f'"{k}"'.encode() for k in keys), 1)


def _gemini_bound(body: bytes) -> Any:
    """``generationConfig.maxOutputTokens`` (None when unset), or :data:`_REREAD`."""
    return _bound(body, _GEMINI_KEYS, 2, _in_config)


def _bound(
    body: bytes,
    keys: tuple[bytes, ...],
    depth: int,
    placed: Callable[[bytes, int], bool] | None = None,
) -> Any:
    """The largest integer among ``keys`` used ``depth`` objects deep (and, if given,
    where ``placed`` says), None when none is, or :data:`_REREAD` when the shortcut
    cannot tell (a key used twice, nested, or a number such as ``1e3``)."""
    bound: int | None = None
    for key in keys:
        found = _first(body, key)
        if found is None:
            continue
        if found is _REREAD:
            return _REREAD
        i, j = found
        k = _int_end(body, j)
        if k == j:
            return _REREAD  # "8000", null, -1: not digits, which the parse reads as the server does
        if k < len(body) and body[k] in b".eE":
            return _REREAD  # 1e3, 1000.0: a number the provider may read as an integer
        if not _at_depth(body, i, k if k > j else j, depth):
            return _REREAD  # nested: is there one at the right depth too? the parse says
        if placed is not None and not placed(body, i):
            return _REREAD
        if k - j <= _MAX_INT_DIGITS:
            bound = max(bound or 0, int(body[j:k]))
    return bound


def _in_config(body: bytes, i: int) -> bool:
    """Whether the key at ``i`` (two objects deep) is a direct member of the object that
    the nearest config key before it opens: then that object is the config."""
    conf = max((body.rfind(key, 0, i), key) for key in _GEMINI_CONFIGS)
    if conf[0] < 0:
        return False
    opened = _keys(body, conf[1], conf[0], i)
    if opened is None or body[opened[1]] != 123:  # '{'
        return False
    return _parses(body[opened[1] : i] + b'"":0}')


def _parsed(flavor: str, body: bytes, path: str = "") -> tuple[str, int | None]:
    """Model and output bound read from the whole parsed body (the rare case)."""
    data = _object(body)
    if data is None:
        return "", None
    model = data.get("model")
    names = output_keys(flavor, path)
    where = data
    if flavor == "gemini":
        where = _gemini_config(data)
        names = ("maxOutputTokens", "max_output_tokens")
    bounds = [_whole(where.get(name)) for name in names]
    options = data.get("options")  # Ollama's native API: -1 (and -2) mean no bound
    if flavor == "openai" and not names and isinstance(options, dict):  # Ollama's native
        bounds.append(_whole(options.get("num_predict")))
    found = [b for b in bounds if b is not None]
    return (model if isinstance(model, str) else ""), (max(found) if found else None)


def _object(body: bytes) -> dict[str, Any] | None:
    try:
        data = jsoncodec.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _gemini_config(data: dict[str, Any]) -> dict[str, Any]:
    conf = data.get("generationConfig", data.get("generation_config"))
    return conf if isinstance(conf, dict) else {}


def _whole(value: Any) -> int | None:
    """A bound as a server reads it: an integer, a float with no fraction (``1e3``), or
    a string of digits (proto3 JSON's int form, Gemini; pydantic's lax mode, vLLM)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 10:
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**9:
        return value
    return None


def answers(flavor: str, path: str, body: bytes) -> int:
    """How many answers the call asks for, each billed for its own output: OpenAI's
    ``n``; the legacy completions' ``best_of`` (generated server-side, all billed) times
    its prompts (a list of strings or of token lists); Gemini's ``candidateCount``. One
    when the body names none of those (the common case: a few ``bytes.find``)."""
    legacy = flavor == "openai" and _LEGACY_COMPLETIONS.search(path) is not None
    if not any(key in body for key in _MANY_ANSWERS) and not (legacy and _PROMPT_LIST.search(body)):
        return 1
    data = _object(body)
    if data is None:
        return 1
    if flavor == "gemini":
        conf = _gemini_config(data)
        count = _whole(conf.get("candidateCount", conf.get("candidate_count")))
        return min(max(count or 1, 1), MAX_ANSWERS)
    if flavor != "openai" or _RESPONSES.search(path):
        return 1  # Anthropic's Messages and the Responses API answer once: no n there
    count = max(_whole(data.get("n")) or 1, 1)
    if legacy:
        count = max(count, _whole(data.get("best_of")) or 1)
        prompt = data.get("prompt")
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            count *= len(prompt)  # a list of prompts (a list of ints is one prompt)
    return min(count, MAX_ANSWERS * MAX_ANSWERS)


@lru_cache(maxsize=1024)
def max_output(model: str) -> int | None:
    """:data:`MAX_OUTPUT` of ``model`` (``gpt-4o-2024-08-06``, ``openai/gpt-4o``), or None."""
    name = model.rpartition("/")[2].lower()
    found = [(len(p), n) for p, n in MAX_OUTPUT if name.startswith(p)]
    return max(found)[1] if found else None


_TIER = b'"service_tier"'
#: A request's ``service_tier`` as the tier that will serve it: OpenAI's names are the
#: tiers (``fast`` is ``priority``'s other name); Anthropic's ``standard_only`` is its
#: ``standard``. ``auto`` (either API) names
#: none: the provider picks.
_ASKED_TIERS = {"standard_only": "standard", "fast": "priority"}


_UNREADABLE = object()
"""A request body that is not a JSON object: what it asks cannot be told."""


def _top_member(body: bytes, key: bytes, name: str) -> Any:
    """The top-level member ``name`` (its quoted bytes ``key``) of a request body: read
    as the top-level ``model`` is (:func:`_top_string`: a scan, no parse), parsed whole
    only where that cannot tell (a key used twice, escapes). "" when there is none,
    :data:`_UNREADABLE` when the body is not a JSON object."""
    if key not in body:
        return ""
    value = _top_string(body, key)
    if value is not _REREAD:
        return value
    try:
        data = jsoncodec.loads(body)
    except ValueError:
        return _UNREADABLE
    return data.get(name, "") if isinstance(data, dict) else _UNREADABLE


def requested_tier(body: bytes) -> str | None:
    """The service tier a request body asks for (lower case), or None: none named, or
    ``auto``."""
    tier = _top_member(body, _TIER, "service_tier")
    if not isinstance(tier, str) or not tier or tier.lower() == "auto":
        return None
    return _ASKED_TIERS.get(tier.lower(), tier.lower())


_SPEED = b'"speed"'


def asks_standard_speed(body: bytes) -> bool:
    """Whether a request body cannot be served fast: it names no top-level ``speed``, or
    names ``standard`` (Anthropic runs a call fast only when asked, ``speed: "fast"``; a
    fast request may still fall back to standard)."""
    speed = _top_member(body, _SPEED, "speed")
    return speed == "" or (isinstance(speed, str) and speed.lower() == "standard")


def estimate_request(flavor: str, path: str, body: bytes) -> Estimate:
    """What the call at ``path`` may cost. The path is read as the server routes it
    (:func:`~addons.metering.providers.normalise_path`, as the meter decides what to bill):
    ``/api/cha%74`` is Ollama's ``/api/chat``, bounded by ``options.num_predict`` only."""
    path = normalise_path(path)
    if flavor == "gemini":
        m = _GEMINI_MODEL.search(path)
        model: Any = m.group(1) if m else ""
        output = _gemini_bound(body)
        if output is _REREAD or _ESCAPED_ASCII.search(body):
            output = _parsed(flavor, body, path)[1]
    else:
        keys = output_keys(flavor, path)
        model, output = _top_string(body), _top_bound(body, keys)
        if (
            model is _REREAD
            or output is _REREAD
            or _ESCAPED_ASCII.search(body)
            or (not keys and _NUM_PREDICT in body)
        ):
            model, output = _parsed(flavor, body, path)
        if not model and "/deployments/" in path:
            m = _DEPLOYMENT.search(path)
            model = m.group(1) if m else ""
    if _EMBEDDINGS.search(path):
        output = 0
    elif output is None:
        output = max_output(model) or DEFAULT_OUTPUT_RESERVE
    if output:
        output *= answers(flavor, path, body)
    searches = search_bound(flavor, body)
    return Estimate(model, -(-len(body) // BYTES_PER_TOKEN), output, searches)


def estimate_turn(model: str, request: bytes, bound: Any) -> Estimate:
    """A turn of a session whose model the session names, not the turn (a Realtime
    response): its request's size, and ``bound`` (its ``max_output_tokens``; ``"inf"``
    or none: the model's bound, else :data:`DEFAULT_OUTPUT_RESERVE`)."""
    if not isinstance(bound, int) or isinstance(bound, bool) or bound <= 0:
        bound = max_output(model) or DEFAULT_OUTPUT_RESERVE
    return Estimate(model, -(-len(request) // BYTES_PER_TOKEN), bound)
