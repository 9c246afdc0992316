from __future__ import annotations

import zlib

from addons.metering.replyend import EndWatch


def test_content_length_completes_on_the_last_byte() -> None:
    w = EndWatch("10", done_event=False)
    assert not w.completes(b"12345")
    assert w.completes(b"67890")


def test_done_event_only_at_a_line_start() -> None:
    w = EndWatch(None, done_event=True)
    assert not w.completes(b'data: {"content":"data: [DONE]"}\n\n')
    assert w.completes(b'data: {"x":1}\n\ndata: [DONE]\n\n')
    assert w.completes(b"data:[DONE]\n\n")
    assert not EndWatch(None, done_event=False).completes(b"data: [DONE]\n\n")
    assert not EndWatch("x", done_event=False).completes(b"data")


def test_done_event_split_between_chunks_is_found_where_it_ends() -> None:
    """``data: [DO`` / ``NE]``: the chunk that completes the marker completes the answer
    (the client's SDK stops there), whatever the split."""
    stream = b'data: {"a":1}\n\ndata: {"b":"[DONE]"}\n\r\ndata: [DONE]\n\n'
    marker_end = stream.rindex(b"]") + 1
    for first in range(1, len(stream)):
        for second in range(first + 1, len(stream) + 1):
            chunks = [stream[:first], stream[first:second], stream[second:]]
            w = EndWatch(None, done_event=True)
            fired = [w.completes(c) for c in chunks if c]
            ends = [len(b"".join(chunks[: i + 1])) for i, c in enumerate(chunks) if c]
            expected = [end >= marker_end and end - len(c) < marker_end
                        for end, c in zip(ends, [c for c in chunks if c], strict=True)]  # fmt: skip
            assert fired[: expected.index(True) + 1] == expected[: expected.index(True) + 1], (
                first, second
            )  # fmt: skip


def test_done_event_in_a_gzip_stream_is_found() -> None:
    """The proxy asks OpenAI streams for no encoding; a provider that gzips anyway still
    has its ``data: [DONE]`` found (decoded here a second time, bounded)."""
    z = zlib.compressobj(6, zlib.DEFLATED, 31)

    def gz(piece: bytes) -> bytes:
        return z.compress(piece) + z.flush(zlib.Z_SYNC_FLUSH)

    w = EndWatch(None, done_event=True, encoding="gzip")
    assert not w.completes(gz(b'data: {"a":1}\n\ndata: [DO'))
    assert w.completes(gz(b"NE]\n\n"))
    bad = EndWatch(None, done_event=True, encoding="gzip")
    assert not bad.completes(b"not gzip at all") and not bad.completes(b"data: [DONE]\n\n")
    assert not EndWatch(None, done_event=True, encoding="x-unknown").completes(b"data: [DONE]\n")
