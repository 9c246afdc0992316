from __future__ import annotations

import json

import pytest

from addons.metering.extract import new_extractor
from addons.metering.extract.gemini import map_usage, model_from_path
from addons.metering.usage import Usage
from tests.addons.metering.extract.cases import GEMINI_JSON_ARRAY, GEMINI_SSE, sse

SSE_PATH = "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"


def run(body: bytes, *, path: str = SSE_PATH, content_type: str = "text/event-stream"):
    ext = new_extractor("gemini", path=path, content_type=content_type)
    ext.feed(body)
    return ext.finish(), ext.output_text(), ext.problems


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/v1beta/models/gemini-2.5-flash:generateContent", "gemini-2.5-flash"),
        ("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key=x", "gemini-2.5-flash"),
        (
            "/v1/projects/p/locations/global/publishers/google/models/gemini-2.5-pro:generateContent",
            "gemini-2.5-pro",
        ),
        ("/v1beta/tunedModels/my-tuned-1:generateContent", "my-tuned-1"),
        ("/v1beta/cachedContents", None),
    ],
)
def test_model_from_path(path: str, model: str | None) -> None:
    assert model_from_path(path) == model


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"promptTokenCount": 10, "candidatesTokenCount": 5}, Usage(input=10, output=5)),
        (
            {"promptTokenCount": 10, "cachedContentTokenCount": 8, "candidatesTokenCount": 5},
            Usage(input=2, cached_input=8, output=5),
        ),
        (
            {"promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 7},
            Usage(input=10, output=12, reasoning=7),
        ),
        (
            {"promptTokenCount": 10, "toolUsePromptTokenCount": 4, "candidatesTokenCount": 1},
            Usage(input=14, output=1),
        ),
        ({"promptTokenCount": 10, "totalTokenCount": 10}, Usage(input=10)),
        ({}, Usage()),
    ],
)
def test_map_usage(meta: dict, expected: Usage) -> None:
    assert map_usage(meta) == expected


def chunk(text: str, usage: dict | None = None, finish: str | None = None, **extra) -> dict:
    cand: dict = {"content": {"role": "model", "parts": [{"text": text}]}}
    if finish:
        cand["finishReason"] = finish
    out: dict = {"candidates": [cand], **extra}
    if usage is not None:
        out["usageMetadata"] = usage
    return out


def test_model_from_path_when_body_lacks_model_version() -> None:
    usage, _, _ = run(sse(chunk("a", {"promptTokenCount": 3, "candidatesTokenCount": 1}, "STOP")))
    assert usage is not None and usage.model == "gemini-2.5-pro"
    assert usage.response_id is None


def test_cut_sse_stream_is_partial_with_last_usage() -> None:
    usage, text, problems = run(
        sse(
            chunk("a", {"promptTokenCount": 3, "candidatesTokenCount": 1}),
            chunk("b", {"promptTokenCount": 3, "candidatesTokenCount": 2}),
        )
    )
    assert usage is not None and usage.partial and (usage.input, usage.output) == (3, 2)
    assert text == "ab"
    assert problems == []


def test_garbled_last_usage_chunk_falls_back_to_previous() -> None:
    body = sse(
        chunk("a", {"promptTokenCount": 3, "candidatesTokenCount": 1}),
        chunk("b", {"promptTokenCount": 3, "candidatesTokenCount": 2}),
        '{"candidates": [], "usageMetadata": {"promptTokenCount": 3, "candidatesTo',
    )
    usage, _, problems = run(body)
    assert usage is not None and usage.output == 2
    assert problems[0].startswith("invalid JSON in usage chunk")
    assert all("invalid JSON" in p for p in problems)  # output_text() reports it again


def test_cut_json_array_uses_complete_elements() -> None:
    body = GEMINI_JSON_ARRAY.body
    cut = body.rindex(b'"usageMetadata"')  # inside the last element
    usage, text, problems = run(
        body[:cut], path=GEMINI_JSON_ARRAY.path, content_type="application/json"
    )
    assert usage is not None and usage.partial
    assert (usage.input, usage.cached_input, usage.output) == (250, 1000, 212)
    assert text == "AI learns patterns "
    assert len(problems) == 1 and "truncated" in problems[0]


def test_blocked_prompt_is_not_partial() -> None:
    body = sse(
        {
            "promptFeedback": {"blockReason": "SAFETY"},
            "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8},
            "modelVersion": "gemini-2.5-pro",
        }
    )
    usage, text, _ = run(body)
    assert usage == Usage(input=8, model="gemini-2.5-pro")
    assert text == ""


def test_error_body_is_a_problem() -> None:
    err = {"error": {"code": 429, "message": "Resource exhausted", "status": "RESOURCE_EXHAUSTED"}}
    usage, _, problems = run(
        json.dumps(err).encode(),
        path="/v1beta/models/gemini-2.5-pro:generateContent",
        content_type="application/json",
    )
    assert usage is None
    assert len(problems) == 1 and "RESOURCE_EXHAUSTED" in problems[0]


def test_thought_parts_and_function_calls_are_text() -> None:
    body = sse(
        {
            "candidates": [
                {
                    "content": {
                        "parts": [
                            {"text": "Thinking...", "thought": True},
                            {"functionCall": {"name": "f", "args": {}}},
                        ]
                    },
                    "finishReason": "STOP",
                }
            ],
            "usageMetadata": {"promptTokenCount": 1},
        }
    )
    _, text, _ = run(body)
    assert text == 'Thinking...{"name": "f", "args": {}}'


def test_lf_and_crlf_sse_agree() -> None:
    lf = GEMINI_SSE.body.replace(b"\r\n", b"\n")
    assert run(lf, path=GEMINI_SSE.path) == run(GEMINI_SSE.body, path=GEMINI_SSE.path)


@pytest.mark.parametrize(
    ("meta", "bad"),
    [
        ({"promptTokenCount": -5, "candidatesTokenCount": 3}, "promptTokenCount=-5"),
        ({"promptTokenCount": 5, "candidatesTokenCount": None}, "candidatesTokenCount=None"),
        ({"promptTokenCount": 5, "cachedContentTokenCount": 9}, "cachedContentTokenCount 9 >"),
        ({"promptTokenCount": 5, "thoughtsTokenCount": 1.5}, "thoughtsTokenCount=1.5"),
    ],
)
def test_unusable_counts_are_invalid(meta: dict, bad: str) -> None:
    usage = map_usage(meta)
    assert usage.invalid is not None and bad in usage.invalid


def test_seen_has_the_model_from_the_path_without_usage() -> None:
    ext = new_extractor("gemini", path=SSE_PATH, content_type="text/event-stream")
    ext.feed(sse({"candidates": [{"content": {"parts": [{"text": "Hi"}]}}], "responseId": "r-1"}))
    assert ext.finish() is None
    assert ext.seen() == ("gemini-2.5-pro", "r-1", None)
