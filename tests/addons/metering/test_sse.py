from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from addons.metering.sse import SSEEvent, SSEParser


def parse(chunks: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events + parser.finish()


def simple(events: list[SSEEvent]) -> list[tuple[str, str, str | None, int | None]]:
    return [(e.event, e.data, e.id, e.retry) for e in events]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"data: hi\n\n", [("message", "hi", None, None)]),
        (b"data:hi\n\n", [("message", "hi", None, None)]),
        (b"data:  two spaces\n\n", [("message", " two spaces", None, None)]),
        (b"data: a\ndata: b\n\n", [("message", "a\nb", None, None)]),
        (b"data: a\r\ndata: b\r\n\r\n", [("message", "a\nb", None, None)]),
        (b"data: a\rdata: b\r\r", [("message", "a\nb", None, None)]),
        (b"event: ping\ndata: {}\n\n", [("ping", "{}", None, None)]),
        (b": comment\n: another\ndata: x\n\n", [("message", "x", None, None)]),
        (b"event: only\n\n", []),  # no data field: nothing dispatched
        (b"data\n\n", [("message", "", None, None)]),  # empty data field still dispatches
        (b"data:\n\n", [("message", "", None, None)]),
        (
            b"id: 7\ndata: x\n\ndata: y\n\n",
            [("message", "x", "7", None), ("message", "y", "7", None)],
        ),
        (b"id: a\0b\ndata: x\n\n", [("message", "x", None, None)]),
        (b"retry: 3000\ndata: x\n\n", [("message", "x", None, 3000)]),
        (b"retry: 3s\ndata: x\n\n", [("message", "x", None, None)]),
        (b"foo: bar\ndata: x\n\n", [("message", "x", None, None)]),
        (b"\xef\xbb\xbfdata: bom\n\n", [("message", "bom", None, None)]),
        (b"data: \xff\xfe\n\n", [("message", "\ufffd\ufffd", None, None)]),
        (b"data: caf\xc3\xa9\n\n", [("message", "café", None, None)]),
        (b"event: a\n\ndata: x\n\n", [("message", "x", None, None)]),  # type resets
        (b"data: last, unterminated", [("message", "last, unterminated", None, None)]),
        (b"data: last\n", [("message", "last", None, None)]),
        (b"", []),
        (b"\n\n\n", []),
    ],
)
def test_whatwg_rules(stream: bytes, expected: list) -> None:
    assert simple(parse([stream])) == expected
    assert simple(parse([stream[i : i + 1] for i in range(len(stream))])) == expected


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    events = parse([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"])
    assert simple(events) == [("message", "a\nb", None, None)]


def test_events_are_returned_as_they_complete() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: one\n") == []
    first = parser.feed(b"\ndata: tw")
    assert [e.data for e in first] == ["one"]
    assert parser.feed(b"o\n") == []
    assert [e.data for e in parser.feed(b"\n")] == ["two"]
    assert parser.finish() == []


def test_offsets_and_boundary() -> None:
    stream = b": hi\n\ndata: a\n\nevent: e\ndata: b\r\n\r\ndata: partial"
    parser = SSEParser()
    events = parser.feed(stream)
    assert [(stream[e.start : e.end]) for e in events] == [
        b"data: a\n\n",
        b"event: e\ndata: b\r\n\r\n",
    ]
    assert parser.boundary == len(stream) - len(b"data: partial")
    assert parser.offset == len(stream)


# --- property: any serialisation, any chunking, same events ------------------------------

_text = st.text(
    alphabet=st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)),
    max_size=12,
)
_event = st.tuples(
    st.one_of(st.none(), st.sampled_from(["message_start", "delta", "x y"])),
    st.lists(_text, min_size=1, max_size=3),
    st.one_of(st.none(), st.text(alphabet="abc123", min_size=1, max_size=4)),
    st.booleans(),  # a comment line before it
)


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(_event, max_size=6),
    eol=st.sampled_from(["\n", "\r\n", "\r"]),
    data=st.data(),
)
def test_any_chunking_gives_the_same_events(events: list, eol: str, data: st.DataObject) -> None:
    text = ""
    expected = []
    last_id = None
    for name, lines, event_id, comment in events:
        if comment:
            text += ": keep-alive" + eol
        if name:
            text += f"event: {name}{eol}"
        if event_id:
            text += f"id: {event_id}{eol}"
            last_id = event_id
        text += "".join(f"data: {line}{eol}" for line in lines) + eol
        expected.append((name or "message", "\n".join(lines), last_id, None))
    raw = text.encode()
    cuts = sorted(data.draw(st.sets(st.integers(0, len(raw)), max_size=20)))
    bounds = [0, *cuts, len(raw)]
    chunks = [raw[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    parsed = parse(chunks)
    assert simple(parsed) == expected
    for event in parsed:  # each event's byte span re-parses to itself
        assert simple(parse([raw[event.start : event.end]]))[0][:2] == (event.event, event.data)
