from __future__ import annotations

import json

import anthropic
import httpx2
import pytest

from addons.metering.extract import new_extractor
from addons.metering.usage import Usage
from tests.addons.metering.extract.cases import (
    ANTHROPIC_STREAM,
    ANTHROPIC_STREAM_CACHE,
    Case,
    sse,
)

MSG = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": []}


def stream(*events: object, content_type: str = "text/event-stream"):
    ext = new_extractor("anthropic", path="/v1/messages", content_type=content_type)
    ext.feed(sse(*events))
    return ext.finish(), ext.output_text(), ext.problems


def start(**usage: object) -> tuple[str, dict]:
    return ("message_start", {"type": "message_start", "message": {**MSG, "usage": usage}})


def delta(**usage: object) -> tuple[str, dict]:
    return (
        "message_delta",
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage},
    )


def block(kind: str, key: str, value: str) -> tuple[str, dict]:
    return (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": kind, key: value}},
    )


def test_cut_after_message_start_is_partial() -> None:
    usage, text, problems = stream(
        start(input_tokens=25, cache_read_input_tokens=100, output_tokens=1),
        block("text_delta", "text", "Hel"),
    )
    assert usage == Usage(
        input=25, cached_input=100, output=1, model="claude-x", response_id="msg_1", partial=True
    )
    assert text == "Hel"
    assert problems == []


@pytest.mark.parametrize(
    ("start_usage", "delta_usage", "expected"),
    [
        pytest.param(
            {"input_tokens": 10, "cache_creation_input_tokens": 300, "output_tokens": 1},
            {"output_tokens": 50},
            (10, 0, 300, 0, 50),
            id="delta-without-input-fields-keeps-start-values",
        ),
        pytest.param(
            {"input_tokens": 10, "cache_creation_input_tokens": 300, "output_tokens": 1},
            {"input_tokens": 10, "cache_creation_input_tokens": 300, "output_tokens": 50},
            (10, 0, 300, 0, 50),
            id="repeated-fields-are-not-added-twice",
        ),
        pytest.param(
            {"input_tokens": 10, "cache_read_input_tokens": 7, "output_tokens": 1},
            {"input_tokens": None, "cache_read_input_tokens": None, "output_tokens": 50},
            (10, 7, 0, 0, 50),
            id="null-in-delta-does-not-erase",
        ),
        pytest.param(
            {"input_tokens": 10, "output_tokens": 1},
            {"input_tokens": 12, "output_tokens": 50},
            (12, 0, 0, 0, 50),
            id="latest-non-null-wins",
        ),
        pytest.param(
            {
                "input_tokens": 3,
                "cache_creation": {"ephemeral_5m_input_tokens": 40, "ephemeral_1h_input_tokens": 2},
                "output_tokens": 1,
            },
            {"output_tokens": 9},
            (3, 0, 40, 2, 9),
            id="cache-creation-breakdown-only",
        ),
        pytest.param(
            {
                "input_tokens": 3,
                "cache_creation_input_tokens": 1000,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 300,
                    "ephemeral_1h_input_tokens": 700,
                },
                "output_tokens": 1,
            },
            {"output_tokens": 9},
            (3, 0, 300, 700, 9),
            id="one-hour-writes-apart-from-five-minute-ones",
        ),
        pytest.param(
            {
                "input_tokens": 3,
                "cache_creation_input_tokens": 1000,
                "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                "output_tokens": 1,
            },
            {
                "output_tokens": 9,
                "cache_creation_input_tokens": 1000,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 0,
                    "ephemeral_1h_input_tokens": 1000,
                },
            },
            (3, 0, 0, 1000, 9),
            id="the-delta-revises-the-one-hour-share",
        ),
    ],
)
def test_stream_usage_fields(start_usage: dict, delta_usage: dict, expected: tuple) -> None:
    usage, _, problems = stream(start(**start_usage), delta(**delta_usage))
    assert usage is not None
    got = (usage.input, usage.cached_input, usage.cache_write, usage.cache_write_1h, usage.output)
    assert got == expected
    assert not usage.partial and usage.invalid is None
    assert problems == []


def test_thinking_and_tool_input_deltas_are_text() -> None:
    _, text, _ = stream(
        start(input_tokens=1),
        block("thinking_delta", "thinking", "Hmm. "),
        block("signature_delta", "signature", "EqQB"),
        block("input_json_delta", "partial_json", '{"city": '),
        block("input_json_delta", "partial_json", '"Paris"}'),
        delta(output_tokens=5),
    )
    assert text == 'Hmm. {"city": "Paris"}'


def test_error_event_is_recorded() -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    usage, _, problems = stream(start(input_tokens=4, output_tokens=1), ("error", error))
    assert usage is not None and usage.partial
    assert len(problems) == 1 and "overloaded_error" in problems[0]


def test_events_without_event_lines_are_read_from_type() -> None:
    events = [
        e[1] if isinstance(e, tuple) else e for e in (start(input_tokens=4), delta(output_tokens=6))
    ]
    usage, _, _ = stream(*events)
    assert usage is not None and (usage.input, usage.output) == (4, 6)


def test_uninteresting_events_are_not_decoded() -> None:
    # A garbled ping or content_block_start must not even be looked at.
    body = sse(
        start(input_tokens=4),
        ("ping", "{garbled"),
        ("content_block_start", "{garbled"),
        delta(output_tokens=6),
    )
    ext = new_extractor("anthropic", path="/v1/messages", content_type="text/event-stream")
    ext.feed(body)
    assert ext.finish() is not None
    assert ext.problems == []


def test_garbled_message_delta_leaves_partial_usage() -> None:
    usage, _, problems = stream(start(input_tokens=4, output_tokens=1), ("message_delta", "{bad"))
    assert usage is not None and usage.partial and usage.output == 1
    assert len(problems) == 1


def test_json_error_body_is_a_problem_without_usage() -> None:
    ext = new_extractor("anthropic", path="/v1/messages", content_type="application/json")
    ext.feed(json.dumps({"type": "error", "error": {"type": "invalid_request_error"}}).encode())
    assert ext.finish() is None
    assert len(ext.problems) == 1


def test_crlf_stream_gives_the_same_usage() -> None:
    ext = new_extractor("anthropic", path="/v1/messages", content_type="text/event-stream")
    ext.feed(ANTHROPIC_STREAM.body.replace(b"\n", b"\r\n"))
    usage = ext.finish()
    assert usage is not None and (usage.input, usage.output) == (25, 15)


def test_thinking_tokens_in_message_delta_are_reasoning() -> None:
    details = {"thinking_tokens": 30}
    usage, _, _ = stream(
        start(input_tokens=4, output_tokens=1),
        delta(output_tokens=50, output_tokens_details=details),
    )
    assert usage is not None and (usage.output, usage.reasoning) == (50, 30)


@pytest.mark.parametrize("case", [ANTHROPIC_STREAM, ANTHROPIC_STREAM_CACHE], ids=lambda c: c.id)
def test_official_sdk_accumulates_the_same_usage(case: Case) -> None:
    """The anthropic SDK's own stream accumulation reads our documented payloads the same
    way (latest non-null value per field, output cumulative)."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=case.body
        )

    client = anthropic.Anthropic(
        api_key="sk-ant-test",
        base_url="http://upstream.test",
        http_client=anthropic.DefaultHttpxClient(transport=httpx2.MockTransport(handler)),
        max_retries=0,
    )
    with client.messages.stream(
        model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    ) as sdk_stream:
        sdk = sdk_stream.get_final_message()
    ours, text, _ = stream_raw(case.body)
    assert ours is not None
    assert ours.input == sdk.usage.input_tokens
    assert ours.cached_input == (sdk.usage.cache_read_input_tokens or 0)
    assert ours.cache_write + ours.cache_write_1h == (sdk.usage.cache_creation_input_tokens or 0)
    one_hour = sdk.usage.cache_creation.ephemeral_1h_input_tokens if sdk.usage.cache_creation else 0
    assert ours.cache_write_1h == (one_hour or 0)
    assert ours.output == sdk.usage.output_tokens
    assert (ours.model, ours.response_id) == (sdk.model, sdk.id)
    assert text == "".join(b.text for b in sdk.content if b.type == "text")


def stream_raw(body: bytes):
    ext = new_extractor("anthropic", path="/v1/messages", content_type="text/event-stream")
    ext.feed(body)
    return ext.finish(), ext.output_text(), ext.problems


def test_iterations_other_than_message_are_billed_beside() -> None:
    """Advisor tool: the top level sums the executor's turns; the advisor's turn is extra."""
    iterations = [
        {"type": "message", "input_tokens": 1128, "output_tokens": 135},
        {
            "type": "advisor_message",
            "model": "claude-opus-4-8",
            "input_tokens": 2543,
            "output_tokens": 18,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
        {
            "type": "compaction",
            "input_tokens": 100,
            "cache_read_input_tokens": 55096,
            "output_tokens": 83,
        },
        {"type": "message", "input_tokens": 1283, "output_tokens": 10},
    ]
    usage, _, problems = stream(
        start(input_tokens=1128, output_tokens=2),
        delta(input_tokens=2411, output_tokens=145, iterations=iterations),
    )
    assert problems == [] and usage is not None and not usage.partial
    assert (usage.input, usage.output) == (2411, 145)
    assert usage.extra == [
        Usage(input=2543, output=18, model="claude-opus-4-8"),
        Usage(input=100, cached_input=55096, output=83, model="claude-x"),
    ]


def test_message_delta_revises_cache_figures() -> None:
    """Compaction: message_start carries the compaction step's cache read; message_delta
    revises the top-level figures to the message's own (the latest non-null wins)."""
    usage, _, _ = stream(
        start(input_tokens=100, cache_read_input_tokens=55096, output_tokens=7),
        delta(input_tokens=181, cache_read_input_tokens=0, output_tokens=8),
    )
    assert usage is not None and (usage.input, usage.cached_input, usage.output) == (181, 0, 8)


def _one_hour_iteration(kind: str, one_hour: int, **usage: object) -> dict:
    return {
        "type": kind,
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": one_hour,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": one_hour},
        **usage,
    }


def test_a_revised_cache_write_total_does_not_keep_a_stale_one_hour_share() -> None:
    """Compaction: message_start reports the compaction step's 2000 one-hour writes,
    message_delta revises the total to 0 without a breakdown (the real compaction
    recording's shape): 2000 one-hour writes against 0 would make the report unusable."""
    usage, _, problems = stream(
        start(
            input_tokens=100,
            cache_creation_input_tokens=2000,
            cache_creation={"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 2000},
            output_tokens=7,
        ),
        delta(input_tokens=181, cache_creation_input_tokens=0, output_tokens=8),
    )
    assert problems == [] and usage is not None
    assert usage.invalid is None and not usage.partial
    assert (usage.input, usage.cache_write, usage.cache_write_1h, usage.output) == (181, 0, 0, 8)


def test_a_revised_total_without_iterations_caps_the_earlier_one_hour_share() -> None:
    usage, _, _ = stream(
        start(
            input_tokens=3,
            cache_creation_input_tokens=2000,
            cache_creation={"ephemeral_1h_input_tokens": 2000},
            output_tokens=1,
        ),
        delta(cache_creation_input_tokens=500, output_tokens=9),
    )
    assert usage is not None and usage.invalid is None
    assert (usage.cache_write, usage.cache_write_1h) == (0, 500)


def test_a_revised_total_takes_its_one_hour_share_from_the_message_iterations() -> None:
    """message_delta revises the total to 1500 without a breakdown; its iterations show
    both message turns wrote for an hour (1000 + 500): none of it is 5-minute writes.
    A compaction iteration's one-hour writes are its own event's, not the top level's."""
    iterations = [
        _one_hour_iteration("message", 1000),
        _one_hour_iteration("compaction", 300),
        _one_hour_iteration("message", 500),
    ]
    usage, _, problems = stream(
        start(
            input_tokens=10,
            cache_creation_input_tokens=1000,
            cache_creation={"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 1000},
            output_tokens=1,
        ),
        delta(
            input_tokens=20,
            cache_creation_input_tokens=1500,
            output_tokens=10,
            iterations=iterations,
        ),
    )
    assert problems == [] and usage is not None and usage.invalid is None
    assert (usage.cache_write, usage.cache_write_1h) == (0, 1500)
    assert [(e.cache_write, e.cache_write_1h) for e in usage.extra] == [(0, 300)]


def test_a_bad_one_hour_count_in_a_message_iteration_is_unusable() -> None:
    usage, _, _ = stream(
        start(input_tokens=10, cache_creation_input_tokens=10, output_tokens=1),
        delta(
            cache_creation_input_tokens=10,
            output_tokens=5,
            iterations=[
                _one_hour_iteration("message", 10, cache_creation={"ephemeral_1h_input_tokens": -1})
            ],
        ),
    )
    assert usage is not None and usage.invalid is not None
    assert "ephemeral_1h_input_tokens=-1" in usage.invalid


def test_null_input_in_message_delta_is_not_reported() -> None:
    usage, _, _ = stream(
        start(input_tokens=25, output_tokens=1),
        delta(input_tokens=None, cache_read_input_tokens=None, output_tokens=40),
    )
    assert usage is not None and usage.invalid is None
    assert (usage.input, usage.output) == (25, 40)


@pytest.mark.parametrize(
    ("delta_usage", "bad"),
    [
        ({"output_tokens": -70}, "output_tokens=-70"),
        ({"output_tokens": None}, "output_tokens=None"),
        ({"output_tokens": 5, "cache_read_input_tokens": "9"}, "cache_read_input_tokens='9'"),
        ({"output_tokens": 2**63}, "output_tokens="),
        (
            {"output_tokens": 5, "output_tokens_details": {"thinking_tokens": 9}},
            "reasoning 9 > output 5",
        ),
    ],
)
def test_unusable_counts_are_invalid(delta_usage: dict, bad: str) -> None:
    usage, _, _ = stream(start(input_tokens=25, output_tokens=1), delta(**delta_usage))
    assert usage is not None and usage.invalid is not None and bad in usage.invalid


def test_cut_stream_keeps_the_id_and_model_seen() -> None:
    ext = new_extractor("anthropic", path="/v1/messages", content_type="text/event-stream")
    ext.feed(sse(start(input_tokens=25, output_tokens=1)))
    assert ext.seen() == ("claude-x", "msg_1", None)


def test_a_one_hour_share_larger_than_all_cache_writes_is_unusable() -> None:
    usage, _, _ = stream(
        start(
            input_tokens=3,
            cache_creation_input_tokens=10,
            cache_creation={"ephemeral_1h_input_tokens": 11},
            output_tokens=1,
        ),
        delta(output_tokens=9),
    )
    assert usage is not None
    assert usage.invalid == "one-hour cache writes 11 > cache writes 10"
