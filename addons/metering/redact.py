"""Keep raw API keys out of what mitmproxy itself prints.

mitmdump's flow lines (its ``dumper`` addon, on by default) print each request's full
URL, and Gemini takes its key as ``?key=``; with ``flow_detail`` 2 or more they print the
request headers too (``Authorization: Bearer ...``), and for a flow that failed, its
error, which for a malformed request quotes the offending line. mitmproxy's log prints
a request line or header line it could not parse whole (``Invalid header line:
b'Authorization Bearer sk-...'``). The dumper writes straight to a file object, so
:func:`install` wraps that object, and :class:`RedactingFilter` sits on the log's
handlers: every line either prints goes through :func:`redact`, which replaces with
``[redacted]`` the value of a key query parameter (``key``, ``api_key``, ``apikey``,
``access_token``, however its name is %-encoded), of a key header line, a
credential-like word right after a key header's name (a malformed line, raw bytes in a
debug log), OpenAI Realtime's ``openai-insecure-api-key.<key>`` subprotocol, a URL's
userinfo, and a PostgreSQL password in a lake locator (:func:`meterline.conninfo.shown`).
Lines without a key pass unchanged (substring tests).
"""

from __future__ import annotations

import logging
import re
from typing import IO, Any
from urllib.parse import unquote_plus

from addons.metering.keys import KEY_HEADERS, QUERY_KEY_PARAMS
from meterline.conninfo import shown

REDACTED = "[redacted]"

_ANSI = r"(?:\x1b\[[0-9;]*m)*"  # the dumper colours its output on a terminal
#: Query parameter names whose value is a credential (compared %-decoded, lower case).
_QUERY_SECRETS = frozenset(
    {*QUERY_KEY_PARAMS, "api_key", "api-key", "apikey", "subscription-key"}
)  # subscription-key: Azure API Management and Cognitive Services
_QUERY_PARAM = re.compile(r"([?&;])([^=&#?;\s\x1b]+)(=)([^&#;\s\x1b]+)")
_HEADER_NAMES = "|".join(re.escape(h) for h in KEY_HEADERS)
_HEADER_LINE = re.compile(
    r"^(\s*" + _ANSI + "(?:" + _HEADER_NAMES + ")"
    + _ANSI + r"\s*:\s*" + _ANSI + r")(?:(bearer|basic)\s+)?[^\x1b\n]+",
    re.IGNORECASE | re.MULTILINE,
)  # fmt: skip
#: A key header's name not followed by ``:`` (a malformed line, quoted in an error), then a
#: word that looks like a credential: 8+ key characters with a digit, ``-`` or ``_`` in it
#: (so "authorization required" stays readable).
_LOOSE_HEADER = re.compile(
    r"(?:(?<![\w-])|(?<=\\n))"  # a word's start, or after an escaped newline (raw bytes)
    r"((?:" + _HEADER_NAMES + r")(?:[\s=:]+|',\s*b')(?:(?:bearer|basic)\s+)?)"
    r"(?=[\w.~+/=-]*[\d_-])[\w.~+/=-]{8,}",
    re.IGNORECASE,
)  # also ``name: value`` in a debug log's raw bytes and HTTP/2's ``(b'name', b'value')``
#: OpenAI Realtime from a browser sends the key as a WebSocket subprotocol.
_WS_SUBPROTOCOL_KEY = re.compile(r"(openai-insecure-api-key\.)[^\s,;'\x1b]+", re.IGNORECASE)
#: A URL's userinfo (``scheme://user:password@host``): a key, as clients put it there.
_USERINFO = re.compile(r"(://|\bCONNECT )[^/@\s'\x1b]+@")  # CONNECT u:key@host:port
#: ``Bearer <credential>`` anywhere (HTTP/2's errors quote a header's value, not its name).
_BEARER = re.compile(r"(?<![\w-])((?:bearer|basic)\s+)[\w.~+/=-]{8,}", re.IGNORECASE)
#: A protocol error quoting raw header bytes (``b'...'``), which may be a key's value.
_PROTOCOL_ERROR = re.compile(r"protocol error|invalid header|header value|header name", re.I)
_BYTES_LITERAL = re.compile(r"b'(?:[^'\\]|\\.)*'" + r'|b"(?:[^"\\]|\\.)*"')
#: Substrings without which a line holds nothing to redact: ``=`` (a query parameter, a
#: ``password=``), ``@`` (a URL's userinfo), ... A flow line without them costs a few
#: substring tests (it cost ~18 µs per line when every URL went through the patterns).
_NEEDLES = (
    "=", "@", "bearer", "basic", "protocol error", "header", "insecure-api-key", *KEY_HEADERS
)  # fmt: skip


def _query_param(m: re.Match[str]) -> str:
    name = m.group(2)
    if "%" in name or "+" in name:
        name = unquote_plus(name, errors="replace")
    if name.lower() not in _QUERY_SECRETS:
        return m.group(0)
    return m.group(1) + m.group(2) + m.group(3) + REDACTED


def _userinfo(m: re.Match[str]) -> str:
    if m.group(0).endswith(":***@"):  # a PostgreSQL URI's password, masked by `shown`
        return m.group(0)
    return m.group(1) + REDACTED + "@"


def redact(text: str) -> str:
    """``text`` with key values in URLs and header lines replaced by ``[redacted]``."""
    lower = text.lower()
    if not any(n in lower for n in _NEEDLES):
        return text
    if "=" in text:
        text = _QUERY_PARAM.sub(_query_param, text)
    text = _HEADER_LINE.sub(
        lambda m: m.group(1) + (m.group(2) + " " if m.group(2) else "") + REDACTED, text
    )
    text = _LOOSE_HEADER.sub(r"\1" + REDACTED, text)
    text = _BEARER.sub(r"\1" + REDACTED, text)
    if "insecure-api-key" in lower:
        text = _WS_SUBPROTOCOL_KEY.sub(r"\1" + REDACTED, text)
    text = shown(text)  # a lake locator's PostgreSQL password, as `***`
    if "@" in text:
        text = _USERINFO.sub(_userinfo, text)
    if _PROTOCOL_ERROR.search(text):
        text = _BYTES_LITERAL.sub("b'" + REDACTED + "'", text)
    return text


class RedactingWriter:
    """A text file object that redacts keys before writing to ``inner``."""

    def __init__(self, inner: IO[str]) -> None:
        self.inner = inner

    def write(self, text: str) -> int:
        self.inner.write(redact(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding, ...
        return getattr(self.inner, name)


def install(dumper: Any) -> bool:
    """Make mitmproxy's ``dumper`` addon print through :class:`RedactingWriter`.

    Returns False when there is no dumper (mitmproxy's UI, or it was removed).
    """
    if dumper is None or not hasattr(dumper, "outfp"):
        return False
    if not isinstance(dumper.outfp, RedactingWriter):
        dumper.outfp = RedactingWriter(dumper.outfp)
    return True


class RedactingFilter(logging.Filter):
    """Redacts keys in every record a log handler prints (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not fit: the handler reports it
            return True
        redacted = redact(message)
        if redacted is not message:
            record.msg, record.args = redacted, None
        return True


def install_log_filter(logger: logging.Logger | None = None) -> RedactingFilter:
    """Put one :class:`RedactingFilter` on each handler of ``logger`` (the root logger,
    where mitmproxy's terminal log hangs); undo with :func:`remove_log_filter`."""
    found = RedactingFilter()
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(found)
    return found


def remove_log_filter(found: RedactingFilter, logger: logging.Logger | None = None) -> None:
    for handler in (logger or logging.getLogger()).handlers:
        handler.removeFilter(found)
