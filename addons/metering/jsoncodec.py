"""JSON on the proxy's hot path: orjson (C), with the standard library deciding the rest.

Every metered response is parsed and every event encoded here; orjson does both several
times faster than :mod:`json`. Where orjson refuses input the standard library accepts
(``NaN``, a lone surrogate escape, a byte-order mark, a value it cannot encode), the
standard library handles it, so what is accepted and what it means are :mod:`json`'s.
One difference is kept: an integer past 64 bits parses as a float, and a token count
that large is unusable either way (:mod:`addons.metering.counts`).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_stdlib_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode
#: Types orjson would write its own way go to ``default=str``, as with the standard library.
_OPTIONS = (
    orjson.OPT_APPEND_NEWLINE | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
)


def loads(data: bytes | str) -> Any:
    """Parse one JSON value; raises :class:`ValueError` as :func:`json.loads` does, and
    for nesting too deep for :func:`json.loads` (its ``RecursionError``): every body the
    proxy parses is a stranger's."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            return json.loads(data)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def event_of(data: bytes, *types: str) -> dict[str, Any] | None:
    """The JSON object ``data`` holds when its ``type`` is one of ``types`` (a WebSocket
    event the meter reads), else None: unreadable, not an object, or a text delta that
    only quotes an event's name."""
    try:
        obj = loads(data)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and obj.get("type") in types else None


def dumps_line(obj: Any) -> bytes:
    """``obj`` as one compact line of UTF-8 JSON ending in a newline (a spool line)."""
    try:
        return orjson.dumps(obj, default=str, option=_OPTIONS)
    except TypeError:  # a lone surrogate, an int past 64 bits: the standard library's way
        return (_stdlib_encode(obj) + "\n").encode("utf-8", "surrogateescape")
