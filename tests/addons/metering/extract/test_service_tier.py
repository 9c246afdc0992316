"""The service tier that served a call (``Usage.service_tier``): OpenAI-flavor
``service_tier`` of chat/completions bodies and chunks and of Responses ``response``
objects (``auto``, the request's echo, names none), Anthropic ``usage.service_tier`` of
the message, ``message_start`` and ``message_delta``; Gemini reports none. From the real
recordings and from bodies written here."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from addons.metering.extract import new_extractor
from addons.metering.usage import Usage
from tests.addons.metering.extract.cases import sse
from tests.support.recordings import recording


def _read(flavor: str, path: str, content_type: str, body: bytes, seed: int = 0) -> Usage:
    """The usage of ``body`` fed in random pieces (the tier must not depend on them)."""
    ext = new_extractor(flavor, path=path, content_type=content_type)
    rng, at = random.Random(seed), 0
    while at < len(body):
        step = rng.randint(1, 64)
        ext.feed(body[at : at + step])
        at += step
    usage = ext.finish()
    assert ext.problems == [] and usage is not None
    return usage


def _recorded(name: str, seed: int = 0) -> Usage:
    meta, body = recording(name)
    return _read(meta["flavor"], meta["request"]["path"], meta["response"]["content_type"],
                 body, seed)  # fmt: skip


@pytest.mark.parametrize(
    ("name", "tier"),
    [
        ("openai/chat-gpt-4.1-nano-text", "default"),
        ("openai/chat-sse-gpt-4o-mini-answer", "default"),
        ("openai/responses-gpt-5-reasoning", "default"),
        ("openai/responses-sse-gpt-5-streaming-usage", "flex"),
        # response.created and .in_progress say "auto" (asked), .completed "default" (served)
        ("openai/responses-sse-gpt-5-web-search-cached", "default"),
        ("azure-openai/responses-sse-code-interpreter", "default"),
        ("groq/chat-gpt-oss-120b-cached", "on_demand"),
        ("anthropic/messages-text", "standard"),
        ("anthropic/messages-sse-sonnet-4.6", "standard"),
        ("gemini/generate-2.0-flash", None),
    ],
)
@pytest.mark.parametrize("seed", range(2))
def test_the_recordings_name_the_tier_that_served_them(
    name: str, tier: str | None, seed: int
) -> None:
    assert _recorded(name, seed).service_tier == tier


CHUNK = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-5"}


def _chunk(tier: str | None, **fields: Any) -> dict[str, Any]:
    return {**CHUNK, "service_tier": tier, **fields}


def test_a_flex_chat_stream_is_flex() -> None:
    body = sse(
        _chunk("flex", choices=[{"index": 0, "delta": {"content": "hi"}}]),
        *(_chunk("flex", choices=[{"index": 0, "delta": {"content": "x"}}]) for _ in range(5)),
        _chunk("flex", choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]),
        _chunk("flex", choices=[], usage={"prompt_tokens": 9, "completion_tokens": 6}),
        "[DONE]",
    )
    usage = _read("openai", "/v1/chat/completions", "text/event-stream", body)
    assert (usage.service_tier, usage.input, usage.output) == ("flex", 9, 6)


def test_a_chat_body_without_a_tier_has_none() -> None:
    body = {**CHUNK, "object": "chat.completion", "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1}}  # fmt: skip
    usage = _read("openai", "/v1/chat/completions", "application/json", json.dumps(body).encode())
    assert usage.service_tier is None


def test_a_responses_stream_cut_after_auto_has_no_tier() -> None:
    """``response.created`` echoes the request's ``auto``: not a tier that served it."""
    response = {"id": "resp_1", "object": "response", "model": "gpt-5", "service_tier": "auto",
                "status": "in_progress", "usage": None}  # fmt: skip
    ext = new_extractor("openai", path="/v1/responses", content_type="text/event-stream")
    ext.feed(sse(("response.created", {"type": "response.created", "response": response})))
    assert ext.seen().service_tier is None


def test_a_cut_chat_stream_keeps_the_tier_seen() -> None:
    ext = new_extractor("openai", path="/v1/chat/completions", content_type="text/event-stream")
    ext.feed(sse(_chunk("priority", choices=[{"index": 0, "delta": {"content": "hi"}}])))
    assert ext.seen() == ("gpt-5", "chatcmpl-1", "priority")


def _message(**usage: Any) -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "model": "claude-x", "content": [],
            "usage": {"input_tokens": 5, "output_tokens": 1, **usage}}  # fmt: skip


def test_anthropic_message_delta_revises_the_tier() -> None:
    message = _message(service_tier="standard")
    body = sse(
        ("message_start", {"type": "message_start", "message": message}),
        ("message_delta", {"type": "message_delta", "delta": {},
                           "usage": {"output_tokens": 7, "service_tier": "priority"}}),
    )  # fmt: skip
    usage = _read("anthropic", "/v1/messages", "text/event-stream", body)
    assert (usage.service_tier, usage.output) == ("priority", 7)


def test_anthropic_message_start_alone_keeps_its_tier() -> None:
    message = _message(service_tier="batch")
    ext = new_extractor("anthropic", path="/v1/messages", content_type="text/event-stream")
    ext.feed(sse(("message_start", {"type": "message_start", "message": message})))
    usage = ext.finish()
    assert usage is not None and usage.partial and usage.service_tier == "batch"
