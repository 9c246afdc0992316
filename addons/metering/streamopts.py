"""Make OpenAI-style streams report usage, invisibly to the client.

A streamed Chat Completions (or legacy Completions) response carries token usage only
when the request set ``stream_options: {"include_usage": true}``. The proxy adds that
option (:func:`add_include_usage`) and removes the extra usage-only chunk from what the
client receives (:class:`~addons.metering.streamfilter.UsageStreamFilter`), so a client
that did not ask for it sees
the stream it expected (except that, per OpenAI's docs, its other chunks then carry
``"usage": null``, a field the SDKs already model).
"""

from __future__ import annotations

import re
from typing import Any

from addons.metering import jsoncodec, jsonspan
from addons.metering.extract.framing import has_value

_MEMBER = b'"stream_options":{"include_usage":true}'


_PARSE: Any = object()


def add_include_usage(body: bytes, *, parsed: Any = _PARSE) -> bytes | None:
    """The request body with ``stream_options.include_usage`` set, or ``None`` when not
    applicable: not JSON, not a JSON object, not ``"stream": true``, not a chat
    (``messages``) or legacy completions (``prompt``) request, or already set.

    An explicit ``"include_usage": false`` is overridden too (the stream filter then hides
    the chunk from the client). The body is edited in place, never re-serialised: every byte
    but the inserted or replaced member stays as the client sent it (a lone surrogate
    escape, ``1e400``, key order, spacing). ``None`` when the edit cannot be placed.
    ``parsed``: ``body`` already parsed (``None`` if it is not JSON), to parse it once.
    """
    obj: Any = parsed
    if obj is _PARSE:
        try:
            obj = jsoncodec.loads(body)
        except ValueError:
            return None
    if not isinstance(obj, dict) or obj.get("stream") is not True:
        return None
    if "messages" not in obj and "prompt" not in obj:
        return None
    options = obj.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return None
    if "stream_options" not in obj:
        return _append_member(body, _MEMBER)
    try:
        members = jsonspan.object_members(body, jsonspan.skip_ws(body, 0))
        start, end = members.last_value("stream_options")
        if not isinstance(options, dict):
            return body[:start] + b'{"include_usage":true}' + body[end:]
        inner = jsonspan.object_members(body, start)
        if "include_usage" in options:
            u_start, u_end = inner.last_value("include_usage")
            return body[:u_start] + b"true" + body[u_end:]
        return jsonspan.insert_member(body, inner, b'"include_usage":true')
    except ValueError:
        return None


#: Azure OpenAI's dated API versions before this one refuse ``stream_options`` (400
#: "Unrecognized request argument"); its v1 API (no ``api-version``) takes it.
AZURE_STREAM_OPTIONS_SINCE = "2024-09-01"
_API_VERSION = re.compile(r"(?:^|&)api-version=(\d{4}-\d{2}-\d{2})", re.IGNORECASE)


def api_version_takes_stream_options(query: str) -> bool:
    """Whether a request with this query string may carry ``stream_options``: not when an
    ``api-version`` (Azure OpenAI's) is dated before :data:`AZURE_STREAM_OPTIONS_SINCE`."""
    if "api-version" not in query.lower():
        return True
    match = _API_VERSION.search(query)
    return match is None or match.group(1) >= AZURE_STREAM_OPTIONS_SINCE


def _append_member(body: bytes, member: bytes) -> bytes | None:
    """``body`` (a JSON object with members, as parsed) with ``member`` added last.

    After a JSON text only whitespace may follow, so the object's closing brace is the
    last other byte: no scan of the members, whose cost grows with their nesting (a
    request of millions of brackets would hold the event loop for seconds)."""
    close = len(body.rstrip(b" \t\r\n")) - 1
    if close < 0 or body[close : close + 1] != b"}":
        return None
    return body[:close] + b"," + member + body[close:]


def is_usage_only_chunk(data: str) -> bool:
    """An SSE data payload that is the extra chunk: ``usage`` set and no ``choices``."""
    if not has_value(data, '"usage"'):
        return False
    try:
        obj = jsoncodec.loads(data)
    except ValueError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get("usage"), dict) and not obj.get("choices")
