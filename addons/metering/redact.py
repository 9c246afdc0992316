"""Keep raw API keys out of what mitmproxy itself prints.

mitmdump's flow lines (its ``dumper`` addon, on by default) print each request's full
URL, and Gemini takes its key as ``?key=``; with ``flow_detail`` 2 or more they print the
request headers too (``Authorization: Bearer ...``). The dumper writes straight to a
file object, so :func:`install` wraps that object: every line it prints goes through
:func:`redact`, which replaces the value of a ``key=`` query parameter and of the key
headers with ``[redacted]``. Lines without a key pass unchanged (one substring test).
"""

from __future__ import annotations

import re
from typing import IO, Any

from addons.metering.keys import KEY_HEADERS

REDACTED = "[redacted]"

_ANSI = r"(?:\x1b\[[0-9;]*m)*"  # the dumper colours its output on a terminal
_QUERY_KEY = re.compile(r"([?&;](?:key|api[_-]?key)=)[^&#\s\x1b]+", re.IGNORECASE)
_HEADER_LINE = re.compile(
    r"^(\s*" + _ANSI + "(?:" + "|".join(re.escape(h) for h in KEY_HEADERS) + ")"
    + _ANSI + r"\s*:\s*" + _ANSI + r")(?:(bearer|basic)\s+)?[^\x1b\n]+",
    re.IGNORECASE | re.MULTILINE,
)  # fmt: skip
_NEEDLES = ("key=", *KEY_HEADERS)


def redact(text: str) -> str:
    """``text`` with key values in URLs and header lines replaced by ``[redacted]``."""
    lower = text.lower()
    if not any(n in lower for n in _NEEDLES):
        return text
    text = _QUERY_KEY.sub(r"\1" + REDACTED, text)
    return _HEADER_LINE.sub(
        lambda m: m.group(1) + (m.group(2) + " " if m.group(2) else "") + REDACTED, text
    )


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
