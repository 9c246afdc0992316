"""The speed and place a call ran at (``Usage.speed``, ``Usage.inference_geo``):
Anthropic's ``usage.speed`` and ``usage.inference_geo`` of the message, ``message_start``
and ``message_delta``, kept as the API spells them. From the real recordings (which show
``global`` and ``not_available``, and no speed) and from bodies written here (fast mode,
US-only inference)."""

from __future__ import annotations

import gzip
import json
import random
from typing import Any

import pytest

from addons.metering.events import Exchange, build_events
from addons.metering.extract import new_extractor
from addons.metering.usage import Usage
from tests.addons.metering.extract.cases import sse
from tests.support.recordings import recording


def _read(path: str, content_type: str, body: bytes, seed: int = 0) -> Usage:
    """The usage of ``body`` fed in random pieces (the values must not depend on them)."""
    ext = new_extractor("anthropic", path=path, content_type=content_type)
    rng, at = random.Random(seed), 0
    while at < len(body):
        step = rng.randint(1, 64)
        ext.feed(body[at : at + step])
        at += step
    usage = ext.finish()
    assert ext.problems == [] and usage is not None
    return usage


@pytest.mark.parametrize(
    ("name", "speed", "geo"),
    [
        ("anthropic/messages-text", None, None),  # an API version before either field
        ("anthropic/messages-cache-read-sonnet-4.5", None, "not_available"),
        ("anthropic/messages-cache-write-opus-4.8", None, "global"),
        ("anthropic/messages-sonnet-5-advisor-iterations", None, "global"),
        ("anthropic/messages-sse-sonnet-4.6", None, "global"),  # message_start's only
        ("anthropic/messages-sse-sonnet-4-thinking", None, "not_available"),
        ("anthropic/messages-sse-haiku-4.5-tools-gzip", None, "not_available"),
        ("anthropic/messages-sse-opus-4.6-adaptive-thinking", None, "global"),
    ],
)
@pytest.mark.parametrize("seed", range(2))
def test_the_recordings_name_where_they_ran(
    name: str, speed: str | None, geo: str | None, seed: int
) -> None:
    meta, body = recording(name)
    if meta["response"].get("content_encoding") == "gzip":
        body = gzip.decompress(body)
    usage = _read(meta["request"]["path"], meta["response"]["content_type"], body, seed)
    assert (usage.speed, usage.inference_geo) == (speed, geo)
    for extra in usage.extra:  # iterations billed beside carry none of their own
        assert (extra.speed, extra.inference_geo) == (None, None)


def _message(**usage: Any) -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-opus-4-6",
            "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 5, "output_tokens": 1, **usage}}  # fmt: skip


def test_a_fast_us_message_says_so() -> None:
    body = json.dumps(_message(service_tier="standard", speed="fast", inference_geo="us"))
    usage = _read("/v1/messages", "application/json", body.encode())
    assert (usage.speed, usage.inference_geo, usage.service_tier) == ("fast", "us", "standard")


@pytest.mark.parametrize("seed", range(3))
def test_a_fast_us_stream_says_so_and_message_delta_revises_it(seed: int) -> None:
    """``message_start`` names both; a ``message_delta`` that repeats the usage without
    them keeps them, and one that says ``standard`` (a fast request served at standard
    speed) wins: billing follows the speed the call ran at."""
    start = _message(speed="fast", inference_geo="us")
    body = sse(
        ("message_start", {"type": "message_start", "message": {**start, "content": []}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "hi"}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"output_tokens": 9}}),
    )  # fmt: skip
    usage = _read("/v1/messages", "text/event-stream", body, seed)
    assert (usage.speed, usage.inference_geo, usage.output) == ("fast", "us", 9)
    fell_back = body.replace(b'"output_tokens": 9}', b'"output_tokens": 9, "speed": "standard"}')
    usage = _read("/v1/messages", "text/event-stream", fell_back, seed)
    assert (usage.speed, usage.inference_geo) == ("standard", "us")


def test_a_stream_cut_after_message_start_keeps_its_values() -> None:
    ext = new_extractor("anthropic", path="/v1/messages", content_type="text/event-stream")
    start = {**_message(speed="fast", inference_geo="us"), "content": []}
    ext.feed(sse(("message_start", {"type": "message_start", "message": start})))
    usage = ext.finish()
    assert usage is not None and usage.partial
    assert (usage.speed, usage.inference_geo) == ("fast", "us")


@pytest.mark.parametrize("value", [None, "", "   ", 6, ["fast"], "x" * 65])
def test_a_value_that_names_nothing_is_none(value: object) -> None:
    body = json.dumps(_message(speed=value, inference_geo=value))
    usage = _read("/v1/messages", "application/json", body.encode())
    assert (usage.speed, usage.inference_geo) == (None, None)


def test_the_events_of_a_call_and_its_iterations_carry_them() -> None:
    """Iterations billed beside the call (an advisor's) ran in the call: its speed and
    place go to their events too, as its tier does."""
    advisor = {"type": "advisor_message", "model": "claude-opus-4-6", "input_tokens": 7,
               "output_tokens": 3}  # fmt: skip
    message = _message(speed="fast", inference_geo="us",
                       iterations=[{"type": "message", "input_tokens": 5, "output_tokens": 1},
                                   advisor])  # fmt: skip
    usage = _read("/v1/messages", "application/json", json.dumps(message).encode())
    assert len(usage.extra) == 1
    ex = Exchange("anthropic", "anthropic", "POST", "api.anthropic.com", "/v1/messages",
                  "agent-a", None, status=200)  # fmt: skip
    rows = build_events(ex, usage, "proxy-1")
    assert [(r["speed"], r["inference_geo"]) for r in rows] == [("fast", "us"), ("fast", "us")]
