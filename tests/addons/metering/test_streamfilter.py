"""The closing rules of :mod:`addons.metering.streamfilter` on Anthropic and Responses
streams (the chat rule is tested with the usage chunk, in test_streamopts.py)."""

from __future__ import annotations

import json

import pytest

from addons.metering.sse import SSEParser
from addons.metering.streamfilter import (
    UsageStreamFilter,
    anthropic_rule,
    chat_rule,
    responses_rule,
)


def event(kind: str, *, named: bool = True, **body: object) -> bytes:
    data = json.dumps({"type": kind, **body})
    return (f"event: {kind}\n" if named else "").encode() + f"data: {data}\n\n".encode()


def reads(stream_filter: UsageStreamFilter, chunks: list[bytes]) -> list[bytes]:
    return [stream_filter.feed(c) for c in chunks] + [stream_filter.flush()]


def test_anthropic_holds_the_last_block_stop_until_message_stop() -> None:
    first_stop, second_stop = (
        event("content_block_stop", index=0),
        event("content_block_stop", index=1),
    )
    chunks = [
        event("message_start", message={"usage": {"input_tokens": 9}}),
        event("content_block_start", index=0),
        first_stop,
        event("content_block_start", index=1),  # another block: the stop before it goes on
        second_stop,
        event("message_delta", usage={"output_tokens": 450}),
        event("message_stop"),
    ]
    out = reads(UsageStreamFilter(anthropic_rule), chunks)
    assert out[2] == b"" and out[3] == first_stop + chunks[3]
    assert out[4:6] == [b"", b""]
    assert out[6] == second_stop + chunks[5] + chunks[6]
    assert b"".join(out) == b"".join(chunks)


def test_a_ping_releases_the_hold_so_keep_alives_keep_coming() -> None:
    """A server tool runs after its block stops; the provider's pings while it runs
    must reach the client as they come (held, a client's read timeout fired)."""
    stop, ping = event("content_block_stop", index=0), event("ping")
    stream_filter = UsageStreamFilter(anthropic_rule)
    assert stream_filter.feed(stop) == b""
    assert stream_filter.feed(ping) == stop + ping
    assert stream_filter.feed(ping) == ping


@pytest.mark.parametrize("named", [True, False], ids=["event-lines", "type-in-data"])
def test_responses_hold_the_done_events_until_the_response_completes(named: bool) -> None:
    def ev(kind: str, **body: object) -> bytes:
        return event(kind, named=named, **body)

    chunks = [
        ev("response.created"),
        ev("response.output_item.added", output_index=0),
        ev("response.reasoning_summary_text.done", text="..."),
        ev("response.output_item.done", output_index=0),
        ev("response.output_item.added", output_index=1),  # the answer still to come
        ev("response.output_text.delta", delta="Hi"),
        ev("response.output_text.done", text="Hi"),
        ev("response.output_item.done", output_index=1),
        ev("response.completed", response={"usage": {"output_tokens": 450}}),
    ]
    out = reads(UsageStreamFilter(responses_rule), chunks)
    assert out[2:4] == [b"", b""] and out[4] == chunks[2] + chunks[3] + chunks[4]
    assert out[6:8] == [b"", b""]
    assert out[8] == chunks[6] + chunks[7] + chunks[8]
    assert b"".join(out) == b"".join(chunks)


def test_a_stream_cut_in_the_hold_gets_what_was_held_at_its_end() -> None:
    stop = event("content_block_stop", index=0)
    stream_filter = UsageStreamFilter(anthropic_rule)
    assert stream_filter.feed(stop + b"event: message_de") == b""
    assert stream_filter.flush() == stop + b"event: message_de"


def test_every_split_forwards_the_same_bytes() -> None:
    stream = b"".join(
        [
            event("message_start"),
            event("content_block_stop", index=0),
            event("message_delta", usage={"output_tokens": 3}),
            event("message_stop"),
        ]
    ).replace(b"\n", b"\r\n")
    for cut in range(len(stream) + 1):
        stream_filter = UsageStreamFilter(anthropic_rule)
        out = b"".join(reads(stream_filter, [stream[:cut], stream[cut:]]))
        assert out == stream
        parser = SSEParser()
        assert len(parser.feed(out)) == 4


def test_a_finish_reason_must_be_a_non_empty_string_to_hold() -> None:
    """A server that sends ``"finish_reason": ""`` on every chunk: nothing is held."""
    chunk = b'data: {"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":""}]}\n\n'
    stream_filter = UsageStreamFilter(chat_rule(drop_usage=True))
    assert stream_filter.feed(chunk) == chunk
    finish = chunk.replace(b'""', b'"stop"')
    assert stream_filter.feed(finish) == b""
    assert stream_filter.feed(b"data: [DONE]\n\n") == finish + b"data: [DONE]\n\n"
