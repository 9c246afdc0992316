from __future__ import annotations

import json

import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from addons.metering.extract import new_extractor
from addons.metering.extract.openai import map_usage
from addons.metering.usage import Usage
from tests.addons.metering.extract.cases import (
    AZURE_CHAT_JSON,
    DEEPSEEK_CHAT_JSON,
    GROQ_CHAT_STREAM,
    MISTRAL_CHAT_STREAM,
    OLLAMA_OPENAI_JSON,
    OPENAI_CHAT_JSON,
    OPENAI_CHAT_STREAM,
    OPENAI_COMPLETIONS_JSON,
    OPENAI_EMBEDDINGS,
    OPENROUTER_CHAT_JSON,
    VLLM_CHAT_STREAM,
    Case,
    sse,
)


def chat_stream(*events: object) -> tuple[Usage | None, str, list[str]]:
    ext = new_extractor("openai", path="/v1/chat/completions", content_type="text/event-stream")
    ext.feed(sse(*events))
    return ext.finish(), ext.output_text(), ext.problems


def chunk(content: str | None = None, **extra: object) -> dict:
    delta = {} if content is None else {"content": content}
    return {
        "id": "chatcmpl-1",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta}],
        **extra,
    }


def n2_chunk(
    index: int, content: str | None, *, output: int | None = None, finish: str | None = None
) -> dict:
    """A chunk of a stream with ``n=2``: one choice, with cumulative usage when ``output``."""
    delta = {} if content is None else {"content": content}
    usage = {"prompt_tokens": 3, "completion_tokens": output} if output is not None else None
    return chunk(choices=[{"index": index, "delta": delta, "finish_reason": finish}], usage=usage)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            {"prompt_tokens": 100, "completion_tokens": 20},
            Usage(input=100, output=20),
            id="chat-plain",
        ),
        pytest.param(
            {
                "prompt_tokens": 100,
                "completion_tokens": 20,
                "prompt_tokens_details": {"cached_tokens": 60},
                "completion_tokens_details": {"reasoning_tokens": 12},
            },
            Usage(input=40, cached_input=60, output=20, reasoning=12),
            id="chat-cached-reasoning",
        ),
        pytest.param(
            {"prompt_tokens": 100, "completion_tokens": 20, "prompt_cache_hit_tokens": 70},
            Usage(input=30, cached_input=70, output=20),
            id="deepseek-hit-without-details",
        ),
        pytest.param(
            {
                "prompt_tokens": 100,
                "completion_tokens": 20,
                "prompt_cache_hit_tokens": 70,
                "prompt_tokens_details": {"cached_tokens": 70},
            },
            Usage(input=30, cached_input=70, output=20),
            id="deepseek-hit-and-details-not-subtracted-twice",
        ),
        pytest.param(
            {"prompt_tokens": 10, "completion_tokens": 0, "prompt_tokens_details": None},
            Usage(input=10),
            id="vllm-null-details",
        ),
        pytest.param(
            {"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 9}},
            Usage(input=0, cached_input=9, invalid="cached 9 + cache writes 0 > prompt 5"),
            id="inconsistent-cached-over-prompt-is-invalid",
        ),
        pytest.param(
            {
                "prompt_tokens": 12,
                "completion_tokens": 2,
                "total_tokens": 354,
                "prompt_tokens_details": {"cached_tokens": 11},
                "completion_tokens_details": {"reasoning_tokens": 340},
            },
            Usage(input=1, cached_input=11, output=342, reasoning=340),
            id="xai-completion-excludes-reasoning",
        ),
        pytest.param(
            {
                "prompt_tokens": 291,
                "completion_tokens": 26,
                "total_tokens": 506,
                "completion_tokens_details": {"reasoning_tokens": 189},
            },
            Usage(input=291, output=215, reasoning=189),
            id="xai-told-by-total",
        ),
        pytest.param(
            {
                "prompt_tokens": 100,
                "completion_tokens": 30,
                "completion_tokens_details": {"reasoning_tokens": 10},
                "total_tokens": 140,
            },
            Usage(input=100, output=40, reasoning=10),
            id="xai-reasoning-below-completion-told-by-total",
        ),
        pytest.param(
            {
                "prompt_tokens": 687,
                "completion_tokens": 240,
                "completion_tokens_details": {"reasoning_tokens": 165},
                "total_tokens": 927,
            },
            Usage(input=687, output=240, reasoning=165),
            id="openai-completion-includes-reasoning",
        ),
        pytest.param(
            {"prompt_tokens": 20, "completion_tokens": 424, "total_tokens": 1016},
            Usage(input=20, output=996, reasoning=572),
            id="gemini-compat-thinking-only-in-the-total",
        ),
        pytest.param(
            {
                "prompt_tokens": 21,
                "completion_tokens": 0,
                "total_tokens": 81,
                "completion_tokens_details": {"reasoning_tokens": 60},
            },
            Usage(input=21, output=60, reasoning=60),
            id="thinking-without-visible-output",
        ),
        pytest.param(
            {
                "prompt_tokens": 20,
                "completion_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 12},
            },
            Usage(input=8, cache_write=12, output=3),
            id="openai-cache-write",
        ),
        pytest.param(
            {
                "input_tokens": 4020,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 4012},
                "output_tokens": 5,
            },
            Usage(input=8, cache_write=4012, output=5),
            id="responses-cache-write",
        ),
        pytest.param(
            {
                "prompt_tokens": 194,
                "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 100},
            },
            Usage(input=94, cache_write=100, output=2),
            id="openrouter-cache-write",
        ),
        pytest.param(
            {"prompt_tokens": 8, "total_tokens": 8},
            Usage(input=8),
            id="embeddings",
        ),
        pytest.param(
            {
                "input_tokens": 36,
                "input_tokens_details": {"cached_tokens": 6},
                "output_tokens": 87,
                "output_tokens_details": {"reasoning_tokens": 50},
            },
            Usage(input=30, cached_input=6, output=87, reasoning=50),
            id="responses",
        ),
        pytest.param(
            {"prompt_eval_count": 26, "eval_count": 282},
            Usage(input=26, output=282),
            id="ollama-native",
        ),
        pytest.param({"prompt_tokens": 3.0, "completion_tokens": 1}, Usage(input=3, output=1)),
        pytest.param({"total_tokens": 8}, None, id="no-known-fields"),
    ],
)
def test_map_usage(raw: dict, expected: Usage | None) -> None:
    assert map_usage(raw) == expected


def test_stream_without_usage_returns_none_and_keeps_text() -> None:
    usage, text, problems = chat_stream(chunk("Hel"), chunk("lo"), chunk(None), "[DONE]")
    assert usage is None
    assert text == "Hello"
    assert problems == []


def test_stream_with_cumulative_usage_in_every_chunk_takes_the_latest() -> None:
    usage, text, _ = chat_stream(
        chunk("a", usage={"prompt_tokens": 9, "completion_tokens": 1}),
        chunk("b", usage={"prompt_tokens": 9, "completion_tokens": 2}),
        chunk("c", usage={"prompt_tokens": 9, "completion_tokens": 3}),
    )
    assert usage is not None and (usage.input, usage.output) == (9, 3)
    assert text == "abc"


def test_stream_tool_calls_and_several_choices_count_as_text() -> None:
    tool = {"index": 0, "function": {"name": "get", "arguments": '{"q":'}}
    more = {"index": 0, "function": {"arguments": '"x"}'}}
    usage, text, _ = chat_stream(
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [tool]}}]},
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [more]}}]},
        {
            "id": "c",
            "model": "m",
            "choices": [
                {"index": 0, "delta": {"content": "A"}},
                {"index": 1, "delta": {"content": "B"}},
            ],
        },
    )
    assert usage is None
    assert text == 'get{"q":"x"}AB'


def test_garbled_first_chunk_is_a_problem_and_later_chunks_still_count() -> None:
    usage, text, problems = chat_stream(
        "{garbled",
        chunk("ok"),
        {
            "id": "c",
            "model": "m",
            "choices": [],
            "usage": {"prompt_tokens": 2, "completion_tokens": 1},
        },
    )
    assert usage is not None and (usage.input, usage.output, usage.model) == (2, 1, "m")
    assert text == "ok"
    assert len(problems) == 1 and "invalid JSON" in problems[0]


def test_garbled_usage_chunk_is_a_problem() -> None:
    usage, _, problems = chat_stream(chunk("x"), '{"choices":[],"usage":{"prompt_tokens":')
    assert usage is None
    assert len(problems) == 1 and "invalid JSON" in problems[0]


def test_error_event_is_recorded() -> None:
    ext = new_extractor("openai", path="/v1/responses", content_type="text/event-stream")
    ext.feed(sse(("error", {"type": "error", "code": "server_error", "message": "boom"})))
    assert ext.finish() is None
    assert len(ext.problems) == 1 and "provider error event" in ext.problems[0]


def test_responses_events_without_event_lines() -> None:
    done = {
        "type": "response.completed",
        "response": {
            "id": "resp_1",
            "object": "response",
            "model": "gpt-5",
            "output": [],
            "usage": {"input_tokens": 3, "output_tokens": 4},
        },
    }
    delta = {"type": "response.output_text.delta", "delta": "Yo"}
    usage, text, problems = chat_stream(delta, done)
    assert usage == Usage(input=3, output=4, model="gpt-5", response_id="resp_1")
    assert text == "Yo"
    assert problems == []


@pytest.mark.parametrize(
    ("final", "expected"),
    [
        ("response.failed", Usage(input=3, output=0, model="gpt-5", response_id="resp_1")),
        ("response.incomplete", Usage(input=3, output=0, model="gpt-5", response_id="resp_1")),
    ],
)
def test_responses_failed_or_incomplete_with_usage(final: str, expected: Usage) -> None:
    response = {
        "id": "resp_1",
        "object": "response",
        "model": "gpt-5",
        "status": final.split(".")[1],
        "usage": {"input_tokens": 3, "output_tokens": 0},
    }
    usage, _, _ = chat_stream((final, {"type": final, "response": response}))
    assert usage == expected


def test_responses_failed_without_usage_is_none() -> None:
    response = {"id": "resp_1", "object": "response", "model": "gpt-5", "usage": None}
    usage, _, problems = chat_stream(
        ("response.created", {"type": "response.created", "response": response}),
        ("response.failed", {"type": "response.failed", "response": response}),
    )
    assert usage is None
    assert problems == []


def test_responses_json_text_falls_back_to_final_output() -> None:
    ext = new_extractor("openai", path="/v1/responses", content_type="application/json")
    body = {
        "id": "resp_2",
        "object": "response",
        "model": "o4-mini",
        "output": [
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "Thought. "}]},
            {"type": "function_call", "name": "f", "arguments": '{"a":1}'},
            {"type": "message", "content": [{"type": "output_text", "text": "Done."}]},
        ],
        "usage": {"input_tokens": 1, "output_tokens": 2},
    }
    ext.feed(json.dumps(body).encode())
    assert ext.finish() == Usage(input=1, output=2, model="o4-mini", response_id="resp_2")
    assert ext.output_text() == 'Thought. {"a":1}Done.'


def test_json_body_that_is_not_an_object_is_a_problem() -> None:
    ext = new_extractor("openai", path="/v1/x", content_type="application/json")
    ext.feed(b'"just a string"')
    assert ext.finish() is None
    assert ext.problems == ["expected a JSON object, got str"]


def test_long_stream_text_survives_compaction() -> None:
    pieces = [f"tok{i} " for i in range(6000)]
    usage, text, problems = chat_stream(*(chunk(p, pad="x" * 200) for p in pieces))
    assert usage is None
    assert text == "".join(pieces)
    assert problems == []


def test_azure_first_chunk_without_model_does_not_hide_the_model() -> None:
    filters = {
        "choices": [],
        "created": 0,
        "id": "",
        "model": "",
        "object": "",
        "prompt_filter_results": [],
    }
    usage, text, _ = chat_stream(
        filters,
        chunk("x"),
        {"id": "chatcmpl-1", "model": "gpt-4o-mini", "choices": [], "usage": {"prompt_tokens": 1}},
    )
    assert usage is not None and usage.model == "gpt-4o-mini"
    assert text == "x"


JSON_SHAPES = [
    (OPENAI_CHAT_JSON, ChatCompletion),
    (AZURE_CHAT_JSON, ChatCompletion),
    (DEEPSEEK_CHAT_JSON, ChatCompletion),
    (OPENROUTER_CHAT_JSON, ChatCompletion),
    (OLLAMA_OPENAI_JSON, ChatCompletion),
    (OPENAI_COMPLETIONS_JSON, Completion),
    (OPENAI_EMBEDDINGS, CreateEmbeddingResponse),
]


@pytest.mark.parametrize(("case", "model"), JSON_SHAPES, ids=lambda v: getattr(v, "id", ""))
def test_documented_json_payloads_are_valid_for_the_official_sdk(case: Case, model: type) -> None:
    parsed = model.model_validate_json(case.body)  # raises if our table drifted from the API
    assert parsed.usage is not None
    assert parsed.usage.prompt_tokens == case.expected["input"] + (
        case.expected["cached_input"] + case.expected["cache_write"]
    )


@pytest.mark.parametrize(
    "case",
    [OPENAI_CHAT_STREAM, MISTRAL_CHAT_STREAM, GROQ_CHAT_STREAM, VLLM_CHAT_STREAM],
    ids=lambda c: c.id,
)
def test_documented_stream_chunks_are_valid_for_the_official_sdk(case: Case) -> None:
    for block in case.body.split(b"\n\n"):
        if block and block != b"data: [DONE]":
            ChatCompletionChunk.model_validate_json(block.removeprefix(b"data: "))


@pytest.mark.parametrize(
    ("raw", "bad"),
    [
        pytest.param(
            {"prompt_tokens": 10, "completion_tokens": -70}, "completion_tokens=-70", id="negative"
        ),
        pytest.param(
            {
                "prompt_tokens": 10,
                "completion_tokens": 1,
                "prompt_tokens_details": {"cached_tokens": -1000},
            },
            "cached_tokens=-1000",
            id="negative-cached",
        ),
        pytest.param({"prompt_tokens": 2**63, "completion_tokens": 1}, "prompt_tokens=", id="huge"),
        pytest.param(
            {"prompt_tokens": 10**9 + 1, "completion_tokens": 1},
            "prompt_tokens=",
            id="over-a-billion",
        ),
        pytest.param(
            {"prompt_tokens": None, "completion_tokens": 5}, "prompt_tokens=None", id="null-main"
        ),
        pytest.param(
            {"prompt_tokens": "12", "completion_tokens": 5}, "prompt_tokens='12'", id="string"
        ),
        pytest.param(
            {"prompt_tokens": 12.5, "completion_tokens": 5}, "prompt_tokens=12.5", id="fraction"
        ),
        pytest.param(
            {"prompt_tokens": True, "completion_tokens": 5}, "prompt_tokens=True", id="bool"
        ),
        pytest.param({"input_tokens": 10, "output_tokens": [3]}, "output_tokens=[3]", id="list"),
        pytest.param(
            {"prompt_eval_count": -1, "eval_count": 3}, "prompt_eval_count=-1", id="ollama"
        ),
    ],
)
def test_unusable_counts_make_the_usage_invalid(raw: dict, bad: str) -> None:
    usage = map_usage(raw)
    assert usage is not None and usage.invalid is not None
    assert bad in usage.invalid


def test_null_details_are_not_reported_not_invalid() -> None:
    usage = map_usage(
        {
            "prompt_tokens": 10,
            "completion_tokens": 2,
            "prompt_tokens_details": {"cached_tokens": None},
            "completion_tokens_details": {"reasoning_tokens": None},
        }
    )
    assert usage == Usage(input=10, output=2)


def test_cut_stream_keeps_the_id_and_model_seen() -> None:
    ext = new_extractor("openai", path="/v1/chat/completions", content_type="text/event-stream")
    ext.feed(sse(chunk("Hel"), chunk("lo")))
    assert ext.finish() is None
    assert ext.seen() == ("gpt-4o-mini", "chatcmpl-1", None)


@pytest.mark.parametrize(
    ("events", "partial"),
    [
        pytest.param(
            [chunk("Hi"), chunk(choices=[], usage={"prompt_tokens": 3, "completion_tokens": 1})],
            False,
            id="usage-chunk-ends-the-answer",
        ),
        pytest.param(
            [chunk("Hi", usage={"prompt_tokens": 3, "completion_tokens": 1})],
            True,
            id="cumulative-usage-then-cut",
        ),
        pytest.param(
            [chunk("Hi", usage={"prompt_tokens": 3, "completion_tokens": 1}), "[DONE]"],
            False,
            id="cumulative-usage-then-done",
        ),
        pytest.param(
            [
                chunk("Hi"),
                chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]),
                chunk(
                    choices=[{"index": 0, "delta": {"content": ""}, "finish_reason": None}],
                    usage={"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
                ),
            ],
            False,
            id="openrouter-usage-after-the-finish-then-cut",
        ),
        pytest.param(
            [
                chunk("Hi", usage={"prompt_tokens": 3, "completion_tokens": 1}),
                chunk("!", usage={"prompt_tokens": 3, "completion_tokens": 2}),
            ],
            True,
            id="cumulative-usage-before-any-finish-then-cut",
        ),
        pytest.param(
            [
                n2_chunk(0, "Hi", output=1),
                n2_chunk(1, "Yo", output=2),
                n2_chunk(0, None, output=2, finish="stop"),
                n2_chunk(1, "!", output=3),
            ],
            True,
            id="n2-cumulative-usage-one-choice-finished-then-cut",
        ),
        pytest.param(
            [
                n2_chunk(0, "Hi", output=1),
                n2_chunk(1, "Yo", output=2),
                n2_chunk(0, None, output=2, finish="stop"),
                n2_chunk(1, "!", output=3),
                n2_chunk(1, None, output=3, finish="length"),
            ],
            False,
            id="n2-cumulative-usage-every-choice-finished-then-cut",
        ),
        pytest.param(
            [
                n2_chunk(0, "Hi"),
                n2_chunk(1, "Yo"),
                n2_chunk(1, None, finish="stop"),
                n2_chunk(0, None, finish="stop"),
                n2_chunk(0, "", output=2),
            ],
            False,
            id="n2-openrouter-usage-after-every-finish-then-cut",
        ),
    ],
)
def test_stream_usage_is_partial_until_the_answer_ends(events: list, partial: bool) -> None:
    usage, _, _ = chat_stream(*events)
    assert usage is not None and usage.partial is partial
