"""Groq's compound systems: a call's tokens are billed at its underlying models' prices
(bodies in Groq's documented shape: :mod:`tests.support.groqcompound`)."""

from __future__ import annotations

import json

from addons.metering.events import Exchange, build_events
from addons.metering.extract import new_extractor
from addons.metering.usage import Usage
from tests.addons.metering.extract.cases import sse
from tests.support.groqcompound import (
    COMPLETION,
    LLAMA,
    OSS,
    PROMPT,
    SCOUT,
    SUB_CALLS,
    compound_json,
    compound_stream,
    sub_call,
    top_usage,
)

EXPECTED_SPLIT = [
    Usage(input=620, cached_input=1500, output=64, model=SCOUT),
    Usage(output=300, reasoning=80, input=900, model=OSS),
    Usage(input=1500, output=200, model=LLAMA),
]


def read(body: bytes, content_type: str) -> tuple[Usage | None, list[str]]:
    ext = new_extractor("openai", path="/openai/v1/chat/completions", content_type=content_type)
    ext.feed(body)
    return ext.finish(), ext.problems


def test_json_call_is_split_by_underlying_model() -> None:
    usage, problems = read(compound_json(top_usage(), SUB_CALLS), "application/json")
    assert problems == [] and usage is not None
    assert usage.model == "groq/compound" and usage.response_id == "stub"
    assert (usage.total, usage.reasoning, usage.web_search) == (0, 0, 0)
    assert not usage.partial and usage.invalid is None
    assert usage.extra == EXPECTED_SPLIT
    assert sum(u.input + u.cached_input for u in usage.extra) == PROMPT
    assert sum(u.output for u in usage.extra) == COMPLETION


def test_stream_call_is_split_by_underlying_model() -> None:
    usage, problems = read(compound_stream(top_usage(), SUB_CALLS), "text/event-stream")
    assert problems == [] and usage is not None and not usage.partial
    assert (usage.model, usage.total) == ("groq/compound", 0)
    assert usage.extra == EXPECTED_SPLIT


def test_each_model_is_its_own_event_beside_the_call() -> None:
    usage, _ = read(compound_json(top_usage(), SUB_CALLS), "application/json")
    assert usage is not None
    ex = Exchange("groq", "openai", "POST", "api.groq.com", "/openai/v1/chat/completions",
                  "alice", None, status=200, t_request=10.0, t_done=12.5)  # fmt: skip
    rows = build_events(ex, usage, "proxy-1", event_id="ml:t-1")
    assert [(r["event_id"], r["model"]) for r in rows] == [
        ("ml:t-1", "groq/compound"),
        ("ml:t-1#0", SCOUT),
        ("ml:t-1#1", OSS),
        ("ml:t-1#2", LLAMA),
    ]
    assert [r["input_tokens"] + r["cached_input_tokens"] for r in rows] == [0, 2120, 900, 1500]
    assert [r["output_tokens"] for r in rows] == [0, 64, 300, 200]
    assert {(r["status"], r["latency_ms"], r["response_id"]) for r in rows} == {
        (200, 2500.0, "stub")
    }


def test_a_breakdown_that_repeats_the_total_keeps_the_calls_usage() -> None:
    """Groq's streams have repeated the call's total in every entry: the entries add up
    to four times the call's usage, so none of them can be believed. A known shape, kept
    whole without a warning (one per compound stream otherwise)."""
    repeated = [sub_call(m, PROMPT, COMPLETION) for m in (LLAMA, SCOUT, SCOUT, LLAMA)]
    for body, kind in (
        (compound_stream(top_usage(), repeated), "text/event-stream"),
        (compound_json(top_usage(), repeated), "application/json"),
    ):
        usage, problems = read(body, kind)
        assert usage is not None and usage.invalid is None and not usage.partial
        assert (usage.model, usage.input, usage.output, usage.extra) == (
            "groq/compound",
            PROMPT,
            COMPLETION,
            [],
        )
        assert problems == []


def test_a_breakdown_that_adds_up_to_something_else_is_noted() -> None:
    off = [sub_call(LLAMA, PROMPT, COMPLETION), sub_call(SCOUT, 5, 1)]
    usage, problems = read(compound_json(top_usage(), off), "application/json")
    assert usage is not None and usage.extra == [] and usage.input == PROMPT
    assert problems == [
        f"usage_breakdown adds up to prompt {PROMPT + 5} and completion {COMPLETION + 1},"
        f" not the usage's {PROMPT} and {COMPLETION}: kept the call's usage"
    ]


def test_a_breakdown_entry_with_unusable_counts_keeps_the_calls_usage() -> None:
    bad = [sub_call(SCOUT, PROMPT, COMPLETION)]
    bad[0]["usage"]["completion_tokens"] = -1
    usage, problems = read(compound_json(top_usage(), bad), "application/json")
    assert usage is not None and usage.invalid is None and usage.extra == []
    assert (usage.input, usage.output) == (PROMPT, COMPLETION)
    assert len(problems) == 1 and problems[0].startswith(f"usage_breakdown entry for {SCOUT}:")


def test_a_breakdown_entry_without_a_model_keeps_the_calls_usage() -> None:
    nameless = [{"usage": top_usage()}]
    usage, problems = read(compound_json(top_usage(), nameless), "application/json")
    assert usage is not None and usage.extra == [] and usage.input == PROMPT
    assert problems == ["usage_breakdown entry without a model or usage: kept the call's usage"]


def test_a_cut_stream_is_not_split() -> None:
    """Usage on a chunk that does not end the answer, no ``[DONE]``: not the final report,
    so the call's own figures are kept for the estimate (a split would leave it none)."""

    body = sse(
        {
            "id": "stub",
            "model": "groq/compound",
            "choices": [{"index": 0, "delta": {"content": "It"}, "finish_reason": None}],
            "x_groq": {"usage": top_usage(), "usage_breakdown": {"models": SUB_CALLS}},
        }
    )
    usage, _ = read(body, "text/event-stream")
    assert usage is not None and usage.partial and usage.extra == []
    assert (usage.input, usage.output) == (PROMPT, COMPLETION)


def test_a_plain_groq_model_is_not_split() -> None:
    body = json.loads(compound_json(top_usage(), SUB_CALLS))
    del body["usage_breakdown"]
    body["model"] = LLAMA
    usage, problems = read(json.dumps(body).encode(), "application/json")
    assert problems == [] and usage is not None and usage.extra == []
    assert (usage.model, usage.input, usage.output) == (LLAMA, PROMPT, COMPLETION)
