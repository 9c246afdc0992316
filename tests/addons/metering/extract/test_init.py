"""The extractor registry and the documented payload table, across every framing."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from addons.metering.extract import READERS, new_extractor
from addons.metering.extract.framing import JsonBodyExtractor, SniffingExtractor, SseExtractor
from addons.metering.usage import Usage
from tests.addons.metering.extract.cases import CASES, STREAM_CASES, Case

DOC = Path(__file__).resolve().parents[4] / "docs" / "token-model.md"  # its table


def run(case: Case, chunks: list[bytes] | None = None, content_type: str | None = "same"):
    ext = new_extractor(
        case.flavor,
        path=case.path,
        content_type=case.content_type if content_type == "same" else content_type,
    )
    for chunk in chunks if chunks is not None else [case.body]:
        ext.feed(chunk)
    return ext, ext.finish()


def fields(usage: Usage | None) -> dict | None:
    if usage is None:
        return None
    d = dataclasses.asdict(usage)
    return {k: d[k] for k in (*CASES[0].expected, *_ZERO_UNLESS_NAMED)}


#: Fields a case names only when they are not 0 (cases older than the field).
_ZERO_UNLESS_NAMED = ("cache_write_1h", "audio_input", "audio_output", "cached_audio_input")


def expected_fields(case: Case) -> dict:
    """The case's expected fields; one-hour cache writes and audio 0 unless it names them."""
    return {**dict.fromkeys(_ZERO_UNLESS_NAMED, 0), **case.expected}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_documented_payload_maps_to_token_model(case: Case) -> None:
    ext, usage = run(case)
    assert ext.problems == []
    assert fields(usage) == expected_fields(case)
    assert usage is not None and not usage.estimated and not usage.partial
    assert ext.output_text() == case.text


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_byte_by_byte_feeding_gives_the_same_result(case: Case) -> None:
    ext, usage = run(case, [case.body[i : i + 1] for i in range(len(case.body))])
    assert ext.problems == []
    assert fields(usage) == expected_fields(case)
    assert ext.output_text() == case.text


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_missing_content_type_is_sniffed(case: Case) -> None:
    ext, usage = run(case, content_type=None)
    assert isinstance(ext, SniffingExtractor)
    assert fields(usage) == expected_fields(case)
    assert ext.output_text() == case.text


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(CASES), data=st.data())
def test_random_chunk_boundaries_give_the_same_usage(case: Case, data: st.DataObject) -> None:
    n = len(case.body)
    cuts = sorted(data.draw(st.sets(st.integers(1, n - 1), max_size=40)))
    bounds = [0, *cuts, n]
    chunks = [case.body[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    ext, usage = run(case, chunks)
    assert ext.problems == []
    assert fields(usage) == expected_fields(case)
    assert ext.output_text() == case.text


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("text/event-stream", SseExtractor),
        ("text/event-stream; charset=utf-8", SseExtractor),
        ("TEXT/EVENT-STREAM", SseExtractor),
        ("application/json", JsonBodyExtractor),
        ("application/json; charset=UTF-8", JsonBodyExtractor),
        ("application/x-ndjson", JsonBodyExtractor),
        ("application/problem+json", JsonBodyExtractor),
        ("text/plain", SniffingExtractor),
        (None, SniffingExtractor),
        ("", SniffingExtractor),
    ],
)
def test_framing_follows_content_type(content_type: str | None, kind: type) -> None:
    for flavor in READERS:
        ext = new_extractor(flavor, path="/v1/x", content_type=content_type)
        assert isinstance(ext, kind)
        for member in ("feed", "finish", "output_text", "problems"):
            assert hasattr(ext, member), member


@pytest.mark.parametrize("case", STREAM_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("label", ["application/json", "application/x-ndjson"])
def test_a_stream_labelled_json_is_read_as_what_it_is(case: Case, label: str) -> None:
    """An OpenAI-compatible server that labels its SSE ``application/json``: read as a
    stream when one was asked for (before: parsed as one JSON body, so estimated)."""
    ext = new_extractor(case.flavor, path=case.path, content_type=label, streaming_requested=True)
    ext.feed(case.body)
    assert fields(ext.finish()) == expected_fields(case)


def test_unknown_flavor_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown API flavor 'cohere'"):
        new_extractor("cohere", path="/", content_type=None)


def test_registry_has_the_three_flavors() -> None:
    assert set(READERS) == {"openai", "anthropic", "gemini"}


def test_docs_table_lists_every_case() -> None:
    rows = {
        m.group(1).strip()
        for m in re.finditer(r"^\|\s*([^|]+?)\s*\|", DOC.read_text(), re.MULTILINE)
    }
    missing = [c.id for c in CASES if c.id not in rows]
    assert missing == []


def test_docs_table_names_a_cache_read_where_a_case_has_one() -> None:
    """A row whose case reads cached input must not say ``cached_input`` is 0 (the
    Mistral row did, while Mistral reports ``prompt_tokens_details.cached_tokens``)."""
    cached_cell = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 6:
            cached_cell[cells[0]] = cells[2]
    wrong = [c.id for c in CASES if c.expected["cached_input"] and cached_cell[c.id] == "0"]
    assert wrong == []


# --- cut streams, missing usage, garbage ----------------------------------------------


@pytest.mark.parametrize("case", STREAM_CASES, ids=lambda c: c.id)
def test_cut_stream_never_raises_and_keeps_text_seen(case: Case) -> None:
    for cut in range(0, len(case.body), max(1, len(case.body) // 25)):
        ext, usage = run(case, [case.body[:cut]])
        text = ext.output_text()
        assert case.text.startswith(text) or text == ""
        if usage is not None:
            want = expected_fields(case)
            inputs = ("input", "cached_input", "cache_write", "cache_write_1h", "audio_input")
            assert sum(getattr(usage, k) for k in inputs) <= sum(want[k] for k in inputs)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\xff\xfe garbage \x80",
        b"data: {not json}\n\n",
        b'data: {"choices": [}\n\ndata: [DONE]\n\n',
        b"event: message_start\ndata: [1,2\n\n",
        b'event: message_delta\ndata: "a string"\n\n',
        b'[{"usageMetadata": 5}, 7, null]',
        b'{"usage": {"prompt_tokens": "many"}}',
        b'{"usage": [1]}',
        b"\n\n\n",
        b"",
        b'data: {"choices":[{"delta":{"content":"\\ud800"}}]}\n\n',
        b"data: " + b"{" * 5000 + b"\n\n",
    ],
)
@pytest.mark.parametrize("flavor", sorted(READERS))
@pytest.mark.parametrize("content_type", ["text/event-stream", "application/json", None])
def test_garbage_never_raises(garbage: bytes, flavor: str, content_type: str | None) -> None:
    ext = new_extractor(flavor, path="/v1/x", content_type=content_type)
    for i in range(0, len(garbage), 3):
        ext.feed(garbage[i : i + 3])
    usage = ext.finish()
    assert usage is None or isinstance(usage, Usage)
    assert isinstance(ext.output_text(), str)
    assert all(isinstance(p, str) and len(p) <= 200 for p in ext.problems)


def test_invalid_json_body_is_a_problem_not_an_exception() -> None:
    ext = new_extractor("openai", path="/v1/chat/completions", content_type="application/json")
    ext.feed(b'{"usage": {"prompt_tokens": 3,')
    assert ext.finish() is None
    assert len(ext.problems) == 1 and "JSON" in ext.problems[0]


def test_problem_list_is_bounded() -> None:
    ext = new_extractor("openai", path="/v1/chat/completions", content_type="text/event-stream")
    ext.feed(b'data: {"usage": {"x": 1}}\n\n' + b"data: {bad\n\n" * 500)
    assert ext.finish() is None
    # The first chunks are decoded to find the model; the rest only when text is needed.
    assert ext.problems[0] == "usage object without known token fields"
    assert len(ext.problems) == 3
    # Content chunks are decoded only when text is needed; their garbage shows up then.
    assert ext.output_text() == ""
    assert len(ext.problems) == 21
    assert ext.problems[-1] == "further problems not recorded"


def test_an_sse_event_over_the_limit_is_skipped_and_the_stream_read_on() -> None:
    """A Gemini chunk carrying a 17 MB image, the usage in a later event: the stream was
    abandoned at the big event (8 input, 0 output estimated against 20 / 4,490)."""
    ext = new_extractor("openai", path="/v1/chat/completions", content_type="text/event-stream")
    ext.feed(b"data: " + b"x" * (16 * 1024 * 1024 + 1))
    ext.feed(b"x" * 1000 + b"\r")  # the blank line split across chunks, as CR LF CR LF
    ext.feed(b'\n\r\ndata: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n')
    usage = ext.finish()
    assert usage is not None and (usage.input, usage.output) == (1, 2)
    assert ext.problems == ["SSE event over 16777216 bytes: read from its end"]


def test_the_usage_at_the_end_of_a_big_sse_event_is_read() -> None:
    path = "/v1beta/models/gemini-3-pro-image:streamGenerateContent?alt=sse"
    ext = new_extractor("gemini", path=path, content_type="text/event-stream")
    image = b'{"inlineData":{"mimeType":"image/png","data":"' + b"A" * (17 * 1024 * 1024) + b'"}}'
    event = (
        b'data: {"candidates":[{"content":{"parts":[' + image + b'],"role":"model"},'
        b'"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":20,'
        b'"candidatesTokenCount":4490,"totalTokenCount":4510},'
        b'"modelVersion":"gemini-3-pro-image-preview","responseId":"r1"}\r\n\r\n'
    )
    for i in range(0, len(event), 1 << 20):
        ext.feed(event[i : i + (1 << 20)])
    usage = ext.finish()
    assert usage is not None and (usage.input, usage.output) == (20, 4490)
    assert ext.seen().model == "gemini-3-pro-image-preview"


@pytest.mark.parametrize("sequence_last", [False, True], ids=["sequence-first", "openai-order"])
def test_the_usage_inside_a_big_responses_event_is_read(sequence_last: bool) -> None:
    """A streamed Responses call that generated six images: its 25 MB
    ``response.completed`` wraps the response, usage inside. The tail reader found only
    the outer object's members: billed 13 input, 0 output, estimated (2,000 / 37,440)."""
    ext = new_extractor("openai", path="/v1/responses", content_type="text/event-stream")
    created = {"type": "response.created", "sequence_number": 0,
               "response": {"id": "resp_1", "object": "response", "status": "in_progress",
                            "model": "gpt-5", "usage": None}}  # fmt: skip
    ext.feed(f"event: response.created\ndata: {json.dumps(created)}\n\n".encode())
    image = '{"type":"image_generation_call","result":"' + "A" * (17 * 1024 * 1024) + '"}'
    usage = {"input_tokens": 2000, "output_tokens": 37440, "total_tokens": 39440}
    response = (
        '{"id":"resp_1","object":"response","status":"completed","model":"gpt-5",'
        f'"output":[{image}],"usage":{json.dumps(usage)},"user":null,"metadata":{{}}}}'
    )
    done = (  # real recordings end "...metadata":{}},"sequence_number":32}
        f'{{"type":"response.completed","response":{response},"sequence_number":9}}'
        if sequence_last
        else f'{{"type":"response.completed","sequence_number":9,"response":{response}}}'
    )
    event = f"event: response.completed\ndata: {done}\n\n".encode()
    for i in range(0, len(event), 1 << 20):
        ext.feed(event[i : i + (1 << 20)])
    got = ext.finish()
    assert got is not None and (got.input, got.output) == (2000, 37440)
    assert not got.partial
