from __future__ import annotations

import zlib

from addons.metering.replyend import EndWatch


def test_content_length_completes_on_the_last_byte() -> None:
    w = EndWatch("10", stream_of=None)
    assert not w.completes(b"12345")
    assert w.completes(b"67890")


def test_done_event_only_at_a_line_start() -> None:
    w = EndWatch(None, stream_of="openai")
    assert not w.completes(b'data: {"content":"data: [DONE]"}\n\n')
    assert w.completes(b'data: {"x":1}\n\ndata: [DONE]\n\n')
    assert w.completes(b"data:[DONE]\n\n")
    assert not EndWatch(None, stream_of=None).completes(b"data: [DONE]\n\n")
    assert not EndWatch("x", stream_of=None).completes(b"data")


def test_done_event_split_between_chunks_is_found_where_it_ends() -> None:
    """``data: [DO`` / ``NE]``: the chunk that completes the marker completes the answer
    (the client's SDK stops there), whatever the split."""
    stream = b'data: {"a":1}\n\ndata: {"b":"[DONE]"}\n\r\ndata: [DONE]\n\n'
    marker_end = stream.rindex(b"]") + 1
    for first in range(1, len(stream)):
        for second in range(first + 1, len(stream) + 1):
            chunks = [stream[:first], stream[first:second], stream[second:]]
            w = EndWatch(None, stream_of="openai")
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

    w = EndWatch(None, stream_of="openai", encoding="gzip")
    assert not w.completes(gz(b'data: {"a":1}\n\ndata: [DO'))
    assert w.completes(gz(b"NE]\n\n"))
    bad = EndWatch(None, stream_of="openai", encoding="gzip")
    assert not bad.completes(b"not gzip at all") and not bad.completes(b"data: [DONE]\n\n")
    assert not EndWatch(None, stream_of="openai", encoding="x-unknown").completes(b"data: [DONE]\n")


def test_anthropic_message_stop_completes_the_answer_once_whole() -> None:
    """The SDK hands the whole message over at ``message_stop`` (the body may end
    seconds later): the chunk that completes that event completes the answer."""
    stream = (
        b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":7}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    end = len(stream)
    for cut in range(1, end):
        w = EndWatch(None, stream_of="anthropic")
        assert (w.completes(stream[:cut]), w.completes(stream[cut:])) == (False, True), cut
    w = EndWatch(None, stream_of="anthropic")
    assert not w.completes(b'event: content_block_delta\ndata: {"text":"event: message_stop"}\n\n')
    assert not EndWatch(None, stream_of="gemini").completes(stream)  # no last event: the end
