"""Where the members of a JSON object sit in its bytes, to edit one without re-encoding.

Re-serialising a client's JSON changes it: ``json.dumps`` turns ``1e400`` into the
invalid ``Infinity`` and cannot encode a lone surrogate escape. This scanner only finds
byte offsets (JSON's structural characters are ASCII and never occur inside a UTF-8
multi-byte sequence), so an edit touches the bytes it means to and nothing else. Input
is assumed to be valid JSON (checked with ``json.loads`` first); anything unexpected
raises ``ValueError``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_WS = re.compile(rb"[ \t\r\n]*")
#: A string, "unrolled": runs of plain bytes match whole, so the regex engine keeps no
#: backtracking state per byte (the alternation ``(?:[^"\\]|\\.)*`` kept ~150 bytes
#: per byte: 2.7 GB and 7 s of a stalled proxy for a 21 MB image in a streaming request).
STRING_PATTERN = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
_STRING = re.compile(STRING_PATTERN, re.DOTALL)
_SCALAR = re.compile(rb"[^,\]}\s]+")
_TOKEN = re.compile(STRING_PATTERN + rb"|[\[\]{}]", re.DOTALL)


def skip_ws(data: bytes, pos: int) -> int:
    m = _WS.match(data, pos)
    return m.end() if m else pos


def value_end(data: bytes, pos: int) -> int:
    """Offset just past the JSON value that starts at ``pos``."""
    first = data[pos : pos + 1]
    if first == b'"':
        m = _STRING.match(data, pos)
        if m is None:
            raise ValueError(f"unterminated string at {pos}")
        return m.end()
    if first in (b"{", b"["):
        depth = 0
        for m in _TOKEN.finditer(data, pos):
            tok = m.group()
            if tok in (b"{", b"["):
                depth += 1
            elif tok in (b"}", b"]"):
                depth -= 1
                if depth == 0:
                    return m.end()
        raise ValueError(f"unclosed container at {pos}")
    m = _SCALAR.match(data, pos)
    if m is None:
        raise ValueError(f"no value at {pos}")
    return m.end()


@dataclass
class Members:
    """An object's members: raw key bytes -> (value start, value end); ``close`` is the
    offset of its closing brace."""

    open: int
    close: int
    spans: list[tuple[bytes, int, int]] = field(default_factory=list)

    def last_value(self, key: str) -> tuple[int, int]:
        """Span of the value of the last member named ``key`` (what ``json.loads`` keeps),
        however its name is spelled (``"stream_option\\u0073"`` names ``stream_options``)."""
        wanted = b'"' + key.encode() + b'"'
        for raw, start, end in reversed(self.spans):
            if raw == wanted or (b"\\" in raw and json.loads(raw) == key):
                return start, end
        raise ValueError(f"no member {key!r}")


def object_members(data: bytes, pos: int) -> Members:
    """The members of the object whose ``{`` is at ``pos``."""
    if data[pos : pos + 1] != b"{":
        raise ValueError(f"no object at {pos}")
    members = Members(open=pos, close=-1)
    pos = skip_ws(data, pos + 1)
    if data[pos : pos + 1] == b"}":
        members.close = pos
        return members
    while True:
        key_end = value_end(data, pos)
        key = data[pos:key_end]
        pos = skip_ws(data, key_end)
        if data[pos : pos + 1] != b":":
            raise ValueError(f"expected ':' at {pos}")
        start = skip_ws(data, pos + 1)
        end = value_end(data, start)
        members.spans.append((key, start, end))
        pos = skip_ws(data, end)
        sep = data[pos : pos + 1]
        if sep == b"}":
            members.close = pos
            return members
        if sep != b",":
            raise ValueError(f"expected ',' or '}}' at {pos}")
        pos = skip_ws(data, pos + 1)


def insert_member(data: bytes, members: Members, member: bytes) -> bytes:
    """``data`` with ``member`` (``"key":value``) added as the object's last member."""
    sep = b"," if members.spans else b""
    return data[: members.close] + sep + member + data[members.close :]
