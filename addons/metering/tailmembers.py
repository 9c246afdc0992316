"""The last members of a JSON object, read from the end of a body too big to read whole.

Providers put the usage after the content: ``{"data": [...], "model": ..., "usage": {...}}``
(OpenAI embeddings, chat), ``{"candidates": [...], "usageMetadata": {...}, ...}`` (Gemini).
A body over the metering limit (:mod:`addons.metering.bounded`: a 17 MB image answer, 2,048
base64 embeddings) is not parsed, but its last bytes are kept, and the usage is read from
them: exact, where an estimate would guess.

A member is recognised by where it starts: a ``"`` right after ``{`` or ``,`` (blanks
allowed). Inside a JSON string every ``"`` is escaped, so such a quote is structural, and a
member list parsed from there through the closing ``}`` of the outermost object to the end
of the body can only be that object's last members (a nested object's list closes before
the end). For a JSON array (Gemini's array stream) or NDJSON, the last element's members
are read the same way.
"""

from __future__ import annotations

import re

from addons.metering.jsonspan import STRING_PATTERN, skip_ws, value_end

#: Bytes of a body's end kept to find the usage in (a usage object is a few hundred).
TAIL_BYTES = 64 * 1024
#: Member starts tried, newest body bytes last (each try is bounded by the tail's length).
MAX_TRIES = 256
_MEMBER_START = re.compile(rb'[{,][ \t\r\n]*"')
_KEY = re.compile(STRING_PATTERN + rb"[ \t\r\n]*:", re.DOTALL)


class TailWindow:
    """The last ``size`` bytes fed (at most twice that held between trims)."""

    def __init__(self, size: int = TAIL_BYTES) -> None:
        self.size = size
        self._held = b""

    def add(self, data: bytes) -> None:
        if len(data) >= self.size:  # no copy of a big piece: its end only
            self._held = data[-self.size :]
            return
        held = self._held + data if self._held else data
        if len(held) > 2 * self.size:
            held = held[-self.size :]
        self._held = held

    def bytes(self) -> bytes:
        return self._held[-self.size :]


def last_members(tail: bytes, depth: int = 0) -> bytes | None:
    """``{...}``: the complete members that end the body's outermost object (or its last
    array element), or None when the tail holds none. ``depth``: of the object closed
    that many ``}`` before the end instead (the ``response`` of ``{"type": ...,
    "response": {..., "usage": {...}}}``)."""
    end = len(tail.rstrip(b" \t\r\n"))
    if end and tail[end - 1 : end] == b"]":  # an array: its last element's members
        end = len(tail[: end - 1].rstrip(b" \t\r\n"))
    for _ in range(depth):
        if tail[end - 1 : end] != b"}":
            return None
        end = len(tail[: end - 1].rstrip(b" \t\r\n"))
    if not end or tail[end - 1 : end] != b"}":
        return None
    body = tail[:end]
    start = _first_member(body)
    return None if start is None else b"{" + body[start:]


def wrapped_members(tail: bytes) -> bytes | None:
    """``{...}``: the last members of the object that is the outermost object's last
    object value, whether other members follow it or not: the ``response`` of
    ``{"type": ..., "response": {..., "usage": {...}}, "sequence_number": 32}`` (OpenAI's
    order) or of ``{"type": ..., "sequence_number": 32, "response": {...}}``."""
    end = len(tail.rstrip(b" \t\r\n"))
    if not end or tail[end - 1 : end] != b"}":
        return None
    body = tail[:end]
    start = _first_member(body)
    if start is None:  # no member of the outer object in the tail: the value closes last
        return last_members(tail, depth=1)
    before = body[: body.rfind(b",", 0, start)].rstrip(b" \t\r\n")
    return last_members(before) if before.endswith(b"}") else last_members(tail, depth=1)


def _first_member(body: bytes) -> int | None:
    """Where the outermost object's last members begin in ``body`` (which ends with its
    ``}``), or None."""
    starts = [m.end() - 1 for m in _MEMBER_START.finditer(body)]
    for start in starts[:MAX_TRIES] if len(starts) <= MAX_TRIES else starts[-MAX_TRIES:]:
        if _members_close_at_end(body, start):
            return start
    return None


def _members_close_at_end(body: bytes, pos: int) -> bool:
    """Whether ``"key": value, ...}`` from ``pos`` parses and its ``}`` is the last byte."""
    last = len(body) - 1
    try:
        while True:
            key = _KEY.match(body, pos)
            if key is None:
                return False
            pos = value_end(body, skip_ws(body, key.end()))
            pos = skip_ws(body, pos)
            sep = body[pos : pos + 1]
            if sep == b"}":
                return pos == last
            if sep != b",":
                return False
            pos = skip_ws(body, pos + 1)
    except ValueError:
        return False
