"""How a response body is framed (one JSON value, a JSON array/sequence, or SSE), kept
apart from what a provider's JSON means (a :class:`Reader` per API flavor).

Every extractor here honours the :class:`~addons.metering.usage.UsageExtractor` contract:
``feed`` never raises, problems are short strings in ``problems``.

Cost: a JSON body is buffered (it cannot be read before it is complete) and parsed once.
An SSE body is parsed incrementally; readers parse only the events that carry figures
and keep text-bearing events as raw strings (:class:`LazyText`) that are decoded only if
:meth:`output_text` is asked for (an estimate is needed only when usage is missing).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from addons.metering import jsoncodec
from addons.metering.sse import SSEEvent, SSEParser
from addons.metering.tailmembers import TAIL_BYTES, TailWindow, last_members, wrapped_members
from addons.metering.usage import Seen, Usage

#: A JSON body larger than this is not metered (the bytes still reach the client).
MAX_JSON_BODY = 64 * 1024 * 1024
#: Raw text-bearing SSE data kept for a possible estimate before it is decoded to text.
LAZY_TEXT_COMPACT_AT = 1024 * 1024
#: Parsed events kept whole for a possible estimate; later ones are reduced to their text.
LAZY_OBJECTS = 16
#: Text kept per flow for an estimate: 1 Mi characters is ~250k tokens, more than any
#: model's largest answer (64k-128k output tokens), so no real answer is cut short.
MAX_KEPT_TEXT = 1024 * 1024
#: An SSE event (or line) growing past this is skipped, read from its end only: memory
#: stays bounded (:class:`SseExtractor`).
MAX_SSE_EVENT = 16 * 1024 * 1024
#: A blank line: two line ends (``\r\n`` is one, hence the atomic groups).
_BLANK_LINE = re.compile(rb"(?>\r\n|\r|\n)(?>\r\n|\r|\n)")
#: At most this many problems are kept per flow (a garbage stream must not grow memory).
MAX_PROBLEMS = 20

_decoder = json.JSONDecoder()
_WS = " \t\r\n"


class Reader(Protocol):
    """What one API flavor's JSON means. Methods may raise; the framing catches it."""

    problems: list[str]

    def on_object(self, obj: Any) -> None:
        """A JSON body, or one element of a streamed JSON array / JSON sequence."""

    def on_event(self, event: SSEEvent) -> None:
        """One SSE event."""

    def usage(self) -> Usage | None: ...

    def text(self) -> str: ...

    def seen(self) -> Seen: ...


#: Makes a fresh reader that records its problems in the given list.
NewReader = Callable[[list[str]], Reader]


def note(problems: list[str], message: str) -> None:
    """Record a problem, keeping the list bounded."""
    if len(problems) < MAX_PROBLEMS:
        problems.append(message[:200])
    elif len(problems) == MAX_PROBLEMS:
        problems.append("further problems not recorded")


def as_int(value: Any) -> int | None:
    """A token count as int; ``None`` for missing/null/non-numeric values."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


#: Longest service tier name kept: anything longer is not a tier a provider names.
MAX_TIER_CHARS = 64


def served_name_of(holder: dict[str, Any], key: str) -> str | None:
    """The name ``holder[key]`` gives to how the call was served (its tier, speed or
    geography), as the provider spells it; ``None`` when it names none (not a string,
    empty, or longer than any name a provider gives)."""
    value = holder.get(key)
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > MAX_TIER_CHARS:
        return None
    return value


def service_tier_of(holder: dict[str, Any]) -> str | None:
    """The served tier ``holder["service_tier"]`` names, as the provider spells it;
    ``None`` when it names none. ``auto`` is what a client asks for, not a tier that
    served it (OpenAI's ``response.created`` echoes the request's), so it is none."""
    value = served_name_of(holder, "service_tier")
    return None if value == "auto" else value


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def has_value(data: str, key: str) -> bool:
    """Cheap pre-check before ``json.loads``: does ``"key"`` occur with a non-null value?

    False positives (the key inside nested objects) only cost a parse; a quoted key cannot
    appear unescaped inside a JSON string, so there are no false negatives for well-formed
    JSON that spells the key plainly.
    """
    i = data.find(key)
    while i >= 0:
        rest = data[i + len(key) : i + len(key) + 16].lstrip(_WS)
        if rest.startswith(":") and not rest[1:].lstrip(_WS).startswith("null"):
            return True
        i = data.find(key, i + 1)
    return False


def iter_json_values(text: str, problems: list[str]) -> Iterator[Any]:
    """Values of a body that is one JSON value, a JSON array streamed element by element
    (Gemini without ``alt=sse``), or whitespace-separated values (NDJSON, Ollama).

    A cut array yields its complete elements, then records a problem.
    """
    pos = _skip_ws(text, 0)
    in_array = text.startswith("[", pos)
    if in_array:
        pos = _skip_ws(text, pos + 1)
    while pos < len(text):
        if in_array and text[pos] == "]":
            pos = _skip_ws(text, pos + 1)
            if pos < len(text):
                note(problems, "bytes after the end of the JSON array")
            return
        try:
            value, pos = _decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            note(problems, f"invalid or truncated JSON at char {exc.pos}: {exc.msg}")
            return
        yield value
        pos = _skip_ws(text, pos)
        if in_array and text.startswith(",", pos):
            pos = _skip_ws(text, pos + 1)
    if in_array:
        note(problems, "truncated JSON array (no closing bracket)")


def _json_values(body: bytes, problems: list[str]) -> Iterator[Any]:
    """:func:`iter_json_values` of a raw body, with one ``json.loads`` for the usual case
    of a single valid JSON value (a top-level array yields its elements)."""
    try:
        value = jsoncodec.loads(body)
    except ValueError:  # NDJSON, a cut array, bad UTF-8, garbage: the careful way
        yield from iter_json_values(body.decode("utf-8", "replace"), problems)
        return
    if isinstance(value, list):
        yield from value
    else:
        yield value


def _skip_ws(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos] in _WS:
        pos += 1
    return pos


def loads(data: str, problems: list[str], what: str) -> Any:
    """``json.loads`` that records a problem and returns ``None`` instead of raising."""
    try:
        return jsoncodec.loads(data)
    except ValueError as exc:
        note(problems, f"invalid JSON in {what}: {exc}")
        return None


class LazyText:
    """Generated text kept cheaply: raw JSON of text-bearing events, decoded on demand.

    ``extract`` turns one decoded event into its text. Once the pending items exceed
    :data:`LAZY_TEXT_COMPACT_AT` characters (or 4,096 items) they are decoded, in order,
    onto the text decoded before (which is not joined again: a long stream costs time in
    proportion to its length, and its text is held in a few large strings, not one per
    event). At most :data:`MAX_KEPT_TEXT` characters are kept: more than any model
    writes in one answer, so an estimate never misses any, and a stream that never ends
    holds a bounded amount of memory.
    """

    __slots__ = ("_extract", "_problems", "_items", "_size", "_what", "_done", "_full")

    def __init__(self, extract: Callable[[Any], str], problems: list[str], what: str) -> None:
        self._extract = extract
        self._problems = problems
        self._what = what
        self._items: list[str | _Decoded] = []  # pending: raw JSON, parsed events, text
        self._size = 0  # characters pending
        self._done = _Run()  # the text decoded so far
        self._full = False

    def add_raw(self, data: str) -> None:
        if self._full:
            return
        self._pend(data, len(data))

    def add_obj(self, obj: Any) -> None:
        """An already decoded event: its text is taken only if asked for (the first
        :data:`LAZY_OBJECTS`; after that at once, so parsed objects do not pile up)."""
        if self._full:
            return
        if len(self._items) < LAZY_OBJECTS and not self._done:
            self._items.append(_Decoded(obj))
            return
        text = self._extract(obj)
        if text:
            self._pend(_Text(text), len(text))

    def _pend(self, item: str, size: int) -> None:
        self._items.append(item)
        self._size += size
        if self._size > LAZY_TEXT_COMPACT_AT or len(self._items) > _MAX_PENDING:
            self._compact()

    def _compact(self) -> None:
        text = self._decode(self._items)
        self._items, self._size = [], 0
        room = MAX_KEPT_TEXT - len(self._done)
        if len(text) >= room:
            text, self._full = text[:room], True
        self._done.add(text)

    def text(self) -> str:
        return (str(self._done) + self._decode(self._items))[:MAX_KEPT_TEXT]

    def _decode(self, items: list[str | _Decoded]) -> str:
        out: list[str] = []
        for item in items:
            if isinstance(item, _Text):
                out.append(item)
                continue
            if isinstance(item, _Decoded):
                obj = item.obj
            else:
                obj = loads(item, self._problems, self._what)
            if obj is not None:
                try:
                    out.append(self._extract(obj))
                except Exception as exc:  # a provider's odd shape must not break estimates
                    note(self._problems, f"unreadable {self._what}: {exc!r}")
        return "".join(out)


#: Pending items of :class:`LazyText` before they are decoded onto its text.
_MAX_PENDING = 4096


class _Run:
    """Text decoded by :class:`LazyText`, in pieces joined 1,024 at a time."""

    __slots__ = ("_joined", "_pieces", "_length")

    def __init__(self) -> None:
        self._joined: list[str] = []
        self._pieces: list[str] = []
        self._length = 0

    def add(self, text: str) -> None:
        if not text:
            return
        self._pieces.append(text)
        self._length += len(text)
        if len(self._pieces) >= 1024:
            self._joined.append("".join(self._pieces))
            self._pieces = []

    def __len__(self) -> int:
        return self._length

    def __str__(self) -> str:
        return "".join(self._joined) + "".join(self._pieces)


class _Text(str):
    """Marks already extracted text in :class:`LazyText` (raw JSON items are plain str)."""

    __slots__ = ()


class _Decoded:
    """An event :class:`LazyText` got already parsed (its text not yet extracted)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj


class JsonBodyExtractor:
    """A JSON response body: buffered, parsed once when usage or text is asked for."""

    def __init__(
        self,
        new_reader: NewReader,
        problems: list[str] | None = None,
        max_bytes: int = MAX_JSON_BODY,
    ) -> None:
        self.problems: list[str] = [] if problems is None else problems
        self._new_reader = new_reader
        self._max_bytes = max_bytes
        self._chunks: list[bytes] = []
        self._size = 0
        self._parsed: Reader | None = None
        self._too_big = False

    def feed(self, data: bytes) -> None:
        if self._too_big or not data:
            return
        self._size += len(data)
        if self._size > self._max_bytes:
            self._too_big = True
            self._chunks = []
            note(self.problems, f"JSON body over {self._max_bytes} bytes: not metered")
            return
        self._chunks.append(data)
        self._parsed = None

    def _reader(self) -> Reader | None:
        if self._too_big:
            return None
        if self._parsed is None:
            reader = self._new_reader(self.problems)
            body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
            try:
                for value in _json_values(body, self.problems):
                    reader.on_object(value)
            except Exception as exc:
                note(self.problems, f"unreadable JSON body: {exc!r}")
            self._parsed = reader
        return self._parsed

    def finish(self) -> Usage | None:
        reader = self._reader()
        if reader is None:
            return None
        try:
            return reader.usage()
        except Exception as exc:
            note(self.problems, f"unreadable usage: {exc!r}")
            return None

    def output_text(self) -> str:
        reader = self._reader()
        if reader is None:
            return ""
        try:
            return reader.text()
        except Exception as exc:
            note(self.problems, f"unreadable output text: {exc!r}")
            return ""

    def seen(self) -> Seen:
        reader = self._reader()
        return Seen() if reader is None else _seen(reader, self.problems)


class SseExtractor:
    """A ``text/event-stream`` body: events are handed to the reader as they complete.

    An event over :data:`MAX_SSE_EVENT` bytes (a Gemini chunk carrying a generated image)
    is not held: its bytes are skipped to the blank line that ends it, keeping only its
    last ones, from which the members that end its JSON (the usage, the model) are handed
    to the reader as the event (:mod:`addons.metering.tailmembers`); the events after it
    are read as usual."""

    def __init__(self, new_reader: NewReader, problems: list[str] | None = None) -> None:
        self.problems: list[str] = [] if problems is None else problems
        self._reader = new_reader(self.problems)
        self._parser = SSEParser()
        self._finished = False
        self._broken = False
        self._skipping: TailWindow | None = None
        self._big_event = "message"
        """The ``event:`` type of the big event being skipped."""
        self._ended_big = False
        """The last event was a big one, complete, read from its end (its own end marker,
        such as Gemini's ``finishReason``, may sit in a part of it that was skipped)."""

    def feed(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            if self._skipping is not None:
                data = self._skip(data)
                if not data:
                    return
            parser = self._parser
            for event in parser.feed(data):
                self._reader.on_event(event)
                self._ended_big = False
            if parser.offset - parser.boundary > MAX_SSE_EVENT:
                self._big_event = parser.pending_event
                self._parser = SSEParser()  # drop the held bytes
                self._skipping = TailWindow()
                self._skipping.add(data[-TAIL_BYTES:])
                note(self.problems, f"SSE event over {MAX_SSE_EVENT} bytes: read from its end")
        except Exception as exc:  # never raise into the proxy
            self._broken = True
            note(self.problems, f"stream not metered after internal error: {exc!r}")

    def _skip(self, data: bytes) -> bytes:
        """Skip the big event's bytes; past the blank line that ends it, the rest."""
        assert self._skipping is not None
        window = self._skipping
        held = window.bytes()[-3:]
        m = _BLANK_LINE.search(held + data)
        if m is None:
            window.add(data)
            return b""
        end = m.start() - len(held)  # where the event's last line ends, in ``data``
        window.add(data[: max(end, 0)])
        tail = window.bytes() if end >= 0 else window.bytes()[: end or None]
        self._skipping = None
        data_json = _recovered(self._big_event, tail)
        if data_json is not None:
            self._reader.on_event(SSEEvent(self._big_event, data_json))
            self._ended_big = True
        return data[m.end() - len(held) :]

    def finish(self) -> Usage | None:
        try:
            if not self._finished and not self._broken:
                self._finished = True
                for event in self._parser.finish():
                    self._reader.on_event(event)
                    self._ended_big = False
            usage = self._reader.usage()
            if usage is not None and self._ended_big and self._skipping is None:
                usage.partial = False  # the stream's last event came whole, blank line and all
            return usage
        except Exception as exc:
            note(self.problems, f"unreadable usage: {exc!r}")
            return None

    def output_text(self) -> str:
        try:
            return self._reader.text()
        except Exception as exc:
            note(self.problems, f"unreadable output text: {exc!r}")
            return ""

    def seen(self) -> Seen:
        return _seen(self._reader, self.problems)


#: SSE event types whose data wraps the object that carries the usage under one key:
#: OpenAI's Responses API sends ``{"type": "response.completed", "sequence_number": n,
#: "response": {..., "usage": {...}}}`` (a ``response.completed`` with several generated
#: images is over 16 MiB).
_WRAPPED = (("response.", "response"),)


def _recovered(event: str, tail: bytes) -> str | None:
    """The data to hand the reader for a big event read from its ``tail``: the members
    that end it, or those of the object it wraps (rewrapped), or None."""
    members = last_members(tail)
    if members is not None and (b'"usage' in members or not event.startswith("response.")):
        return members.decode("utf-8", "replace")
    for prefix, key in _WRAPPED:
        if event.startswith(prefix):
            inner = wrapped_members(tail)
            if inner is not None:
                body = inner.decode("utf-8", "replace")
                return f'{{"type": {json.dumps(event)}, "{key}": {body}}}'
    return None if members is None else members.decode("utf-8", "replace")


class SniffingExtractor:
    """For a body whose content type says nothing useful: the first non-blank byte
    decides (``{`` or ``[`` means JSON, anything else SSE)."""

    def __init__(self, new_reader: NewReader) -> None:
        self.problems: list[str] = []
        self._new_reader = new_reader
        self._inner: JsonBodyExtractor | SseExtractor | None = None

    def feed(self, data: bytes) -> None:
        if self._inner is None:
            head = data.lstrip(b" \t\r\n\xef\xbb\xbf")
            if not head:
                return
            kind = JsonBodyExtractor if head[:1] in b"{[" else SseExtractor
            self._inner = kind(self._new_reader, self.problems)
            data = head
        self._inner.feed(data)

    def finish(self) -> Usage | None:
        return None if self._inner is None else self._inner.finish()

    def output_text(self) -> str:
        return "" if self._inner is None else self._inner.output_text()

    def seen(self) -> Seen:
        return Seen() if self._inner is None else self._inner.seen()


def _seen(reader: Reader, problems: list[str]) -> Seen:
    try:
        seen = reader.seen()
    except Exception as exc:
        note(problems, f"unreadable model or id: {exc!r}")
        return Seen()
    model = seen.model if isinstance(seen.model, str) and seen.model else None
    rid = seen.response_id if isinstance(seen.response_id, str) and seen.response_id else None
    tier = seen.service_tier if isinstance(seen.service_tier, str) and seen.service_tier else None
    return Seen(model, rid, tier)
