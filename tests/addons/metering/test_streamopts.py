from __future__ import annotations

import json

import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from addons.metering.sse import SSEParser
from addons.metering.streamfilter import UsageStreamFilter, chat_rule
from addons.metering.streamopts import add_include_usage, is_usage_only_chunk
from tests.addons.metering.extract.cases import MISTRAL_CHAT_STREAM, OPENAI_CHAT_STREAM, sse

# --- add_include_usage ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        {"model": "gpt-3.5-turbo-instruct", "stream": True, "prompt": "Say hi"},
        {"model": "m", "stream": True, "messages": [], "stream_options": {}},
        {"model": "m", "stream": True, "messages": [], "stream_options": None},
        {"model": "m", "stream": True, "messages": [], "stream_options": {"include_usage": False}},
        {
            "model": "m",
            "stream": True,
            "messages": [],
            "stream_options": {"include_obfuscation": False},
        },
    ],
)
@pytest.mark.parametrize("indent", [None, 2])
def test_include_usage_is_added(body: dict, indent: int | None) -> None:
    raw = (json.dumps(body, indent=indent) + "\n").encode()
    out = add_include_usage(raw)
    assert out is not None
    parsed = json.loads(out)
    assert parsed["stream_options"]["include_usage"] is True
    rest = {k: v for k, v in parsed.items() if k != "stream_options"}
    assert rest == {k: v for k, v in body.items() if k != "stream_options"}
    for key, value in (body.get("stream_options") or {}).items():
        if key != "include_usage":
            assert parsed["stream_options"][key] == value


def test_client_bytes_are_kept_when_stream_options_is_absent() -> None:
    raw = b'{ "model" : "gpt-4o",\n  "stream": true, "messages": [], "temperature": 1.0e0 }\n'
    out = add_include_usage(raw)
    assert out == raw[: raw.rindex(b"}")] + b',"stream_options":{"include_usage":true}}\n'


def test_the_member_that_counts_is_the_one_changed() -> None:
    """Two ``stream_options``, the last spelled with an escape: ``json.loads`` keeps the
    last, so that is the one set to true (the first stays as the client sent it)."""
    raw = (
        b'{"stream":true,"messages":[],"stream_options":{"include_usage":false},'
        b'"stream_option\\u0073":{"include_usage":false}}'
    )
    out = add_include_usage(raw)
    assert out == raw[: raw.rindex(b"false")] + b"true}}"
    assert json.loads(out)["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "m", "stream": false, "messages": []}',
        b'{"model": "m", "messages": []}',
        b'{"model": "m", "stream": "true", "messages": []}',
        b'{"model": "m", "stream": true, "messages": [],'
        b' "stream_options": {"include_usage": true}}',
        b'{"model": "gpt-5", "stream": true, "input": "hi"}',  # Responses API: always has usage
        b'{"model": "text-embedding-3-small", "input": "hi"}',
        b"[1, 2]",
        b"not json",
        b"",
        b"\xff\xfe",
        b'{"stream": true, "messages": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",  # too deep
    ],
)
def test_not_applicable(raw: bytes) -> None:
    assert add_include_usage(raw) is None


# --- UsageStreamFilter ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('{"choices":[],"usage":{"prompt_tokens":1}}', True),
        ('{"usage":{"prompt_tokens":1}}', True),
        ('{"choices":null,"usage":{"prompt_tokens":1}}', True),
        ('{"choices":[{"delta":{}}],"usage":{"prompt_tokens":1}}', False),  # Mistral style
        ('{"choices":[{"delta":{"content":"x"}}],"usage":null}', False),
        ('{"choices":[],"usage":null}', False),
        ("[DONE]", False),
        ('{"usage": {broken', False),
    ],
)
def test_is_usage_only_chunk(data: str, expected: bool) -> None:
    assert is_usage_only_chunk(data) is expected


def without_usage_chunk(stream: bytes) -> bytes:
    """The reference: the stream minus the byte span of each usage-only event."""
    parser = SSEParser()
    events = parser.feed(stream) + parser.finish()
    out, pos = b"", 0
    for event in events:
        if is_usage_only_chunk(event.data):
            out += stream[pos : event.start]
            pos = event.end
    return out + stream[pos:]


def run(dropper: UsageStreamFilter, chunks: list[bytes]) -> list[bytes]:
    return [dropper.feed(c) for c in chunks] + [dropper.flush()]


def test_drops_only_the_usage_chunk() -> None:
    stream = OPENAI_CHAT_STREAM.body
    dropper = UsageStreamFilter(chat_rule(drop_usage=True))
    out = b"".join(run(dropper, [stream]))
    assert dropper.dropped == 1
    assert b'"usage": {' not in out and b'"choices": []' not in out
    assert out.endswith(b"data: [DONE]\n\n")
    assert out == without_usage_chunk(stream)
    assert len(stream) - len(out) == len(sse(json.loads(stream.split(b"\n\n")[4][6:])))


def test_usage_inside_a_content_chunk_is_kept() -> None:
    dropper = UsageStreamFilter(chat_rule(drop_usage=True))
    stream = MISTRAL_CHAT_STREAM.body
    assert b"".join(run(dropper, [stream])) == stream
    assert dropper.dropped == 0


@pytest.mark.parametrize("crlf", [False, True])
def test_comments_and_other_events_pass_unchanged(crlf: bool) -> None:
    usage = {"choices": [], "usage": {"prompt_tokens": 1}}
    body = sse({"choices": [{"delta": {"content": "a"}}]}, usage, "[DONE]", crlf=crlf)
    stream = b": OPENROUTER PROCESSING\n\n" + body + b"data: after\n\n"
    out = b"".join(run(UsageStreamFilter(chat_rule(drop_usage=True)), [stream]))
    assert out == without_usage_chunk(stream)
    assert out.startswith(b": OPENROUTER PROCESSING\n\n")
    assert b"prompt_tokens" not in out


def test_complete_events_are_never_held() -> None:
    dropper = UsageStreamFilter(chat_rule(drop_usage=True))
    first = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
    assert dropper.feed(first) == first  # fast path, no copy needed
    assert dropper.feed(b'data: {"choices":[{"delta":') == b""  # incomplete: held
    assert dropper.feed(b'{"content":"b"}}]}\n\ndata: par') == (
        b'data: {"choices":[{"delta":{"content":"b"}}]}\n\n'
    )
    assert dropper.flush() == b"data: par"


@settings(max_examples=80, deadline=None)
@given(
    stream=st.sampled_from(
        [
            OPENAI_CHAT_STREAM.body,
            OPENAI_CHAT_STREAM.body.replace(b"\n", b"\r\n"),
            OPENAI_CHAT_STREAM.body.replace(b"\n", b"\r"),
            MISTRAL_CHAT_STREAM.body,
        ]
    ),
    data=st.data(),
)
def test_any_chunking_forwards_the_same_bytes(stream: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=30)))
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    dropper = UsageStreamFilter(chat_rule(drop_usage=True))
    pieces = run(dropper, chunks)
    out = b"".join(pieces)
    assert out == without_usage_chunk(stream)
    parser = SSEParser()
    client_events = [e.data for e in parser.feed(out) + parser.finish()]
    reference = [e.data for e in SSEParser().feed(stream) if not is_usage_only_chunk(e.data)]
    assert client_events == reference


# --- with the official SDK on the client side -----------------------------------------------


def sdk_stream(dropper: UsageStreamFilter | None) -> tuple[dict, list]:
    """The openai SDK streams a chat completion from a transport that serves the documented
    stream (with its usage chunk), optionally filtered by the dropper in small chunks."""
    sent: dict = {}

    def handler(request: httpx2.Request) -> httpx2.Response:
        sent["body"] = request.content
        body = OPENAI_CHAT_STREAM.body
        if dropper is not None:
            body = b"".join(run(dropper, [body[i : i + 13] for i in range(0, len(body), 13)]))
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    client = openai.OpenAI(
        api_key="sk-test",
        base_url="http://upstream.test/v1",
        http_client=openai.DefaultHttpxClient(transport=httpx2.MockTransport(handler)),
        max_retries=0,
    )
    stream = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    return sent, list(stream)


def test_sdk_request_gets_include_usage_and_sdk_client_never_sees_the_usage_chunk() -> None:
    sent, unfiltered = sdk_stream(None)
    assert any(c.usage is not None and c.choices == [] for c in unfiltered)  # the extra chunk

    patched = add_include_usage(sent["body"])
    assert patched is not None
    assert json.loads(patched)["stream_options"] == {"include_usage": True}

    _, chunks = sdk_stream(UsageStreamFilter(chat_rule(drop_usage=True)))
    assert len(chunks) == len(unfiltered) - 1
    assert all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == OPENAI_CHAT_STREAM.text


def test_giant_event_stops_filtering_and_passes_everything() -> None:
    dropper = UsageStreamFilter(chat_rule(drop_usage=True))
    usage_only = b'data: {"choices":[],"usage":{"prompt_tokens":1}}\n\n'
    assert dropper.feed(usage_only) == b""
    big = b"data: " + b"x" * (16 * 1024 * 1024 + 1)
    assert dropper.feed(big) == big  # not held back beyond the limit
    assert dropper.feed(b"\n\n" + usage_only) == b"\n\n" + usage_only  # filtering stopped
    assert dropper.flush() == b""


# --- the closing chunks wait for [DONE] -----------------------------------------------------


def _chunk(**fields: object) -> bytes:
    return b"data: " + json.dumps({"object": "chat.completion.chunk", **fields}).encode() + b"\n\n"


CONTENT = _chunk(choices=[{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}])
FINISH = _chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
USAGE = _chunk(choices=[], usage={"prompt_tokens": 9, "completion_tokens": 450})
DONE = b"data: [DONE]\n\n"


@pytest.mark.parametrize("drop_usage", [True, False])
def test_the_finish_chunk_waits_for_done(drop_usage: bool) -> None:
    stream_filter = UsageStreamFilter(chat_rule(drop_usage=drop_usage))
    assert stream_filter.feed(CONTENT) == CONTENT
    assert stream_filter.feed(FINISH) == b""  # a client could stop reading here
    assert stream_filter.feed(USAGE) == b""
    usage = b"" if drop_usage else USAGE
    assert stream_filter.feed(DONE) == FINISH + usage + DONE
    assert stream_filter.flush() == b""


def test_finish_usage_and_done_in_one_read_pass_at_once() -> None:
    stream_filter = UsageStreamFilter(chat_rule(drop_usage=True))
    assert stream_filter.feed(CONTENT + FINISH + USAGE + DONE) == CONTENT + FINISH + DONE


def test_another_choice_still_streaming_releases_the_held_finish() -> None:
    stream_filter = UsageStreamFilter(chat_rule(drop_usage=True))
    other = _chunk(choices=[{"index": 1, "delta": {"content": "lo"}, "finish_reason": None}])
    last = _chunk(choices=[{"index": 1, "delta": {}, "finish_reason": "length"}])
    assert stream_filter.feed(FINISH) == b""
    assert stream_filter.feed(other) == FINISH + other  # in order, never reordered
    assert stream_filter.feed(last) == b""
    assert stream_filter.feed(USAGE + DONE) == last + DONE


def test_a_stream_without_done_gets_the_held_chunks_at_its_end() -> None:
    stream_filter = UsageStreamFilter(chat_rule(drop_usage=True))
    assert stream_filter.feed(FINISH + USAGE + b'data: {"tail') == b""
    assert stream_filter.flush() == FINISH + b'data: {"tail'


def test_a_usage_chunk_split_in_the_hold_is_still_dropped() -> None:
    stream_filter = UsageStreamFilter(chat_rule(drop_usage=True))
    body = FINISH + USAGE.replace(b"\n\n", b"\r\n\r\n") + DONE
    cut = len(FINISH) + len(USAGE) + 1  # between the usage chunk's "\r" and "\n"
    out = stream_filter.feed(body[:cut]) + stream_filter.feed(body[cut:]) + stream_filter.flush()
    assert out == FINISH + DONE
