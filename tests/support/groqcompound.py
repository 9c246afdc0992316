"""Groq compound system bodies, written in the shape Groq documents: ``usage`` is the sum
of the sub-calls on underlying models listed in ``usage_breakdown.models``; a stream
carries both in ``x_groq``, on the chunk with the ``finish_reason``."""

from __future__ import annotations

import json
from typing import Any

SCOUT = "meta-llama/llama-4-scout-17b-16e-instruct"
LLAMA = "llama-3.3-70b-versatile"
OSS = "openai/gpt-oss-120b"


def sub_call(model: str, prompt: int, completion: int, **details: Any) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "queue_time": 0.05,
        "prompt_tokens": prompt,
        "prompt_time": 0.01,
        "completion_tokens": completion,
        "completion_time": 0.2,
        "total_tokens": prompt + completion,
        "total_time": 0.21,
        **details,
    }
    return {"model": model, "usage": usage}


#: Four sub-calls on three models: the first model's two calls are summed.
SUB_CALLS = [
    sub_call(SCOUT, 120, 4),
    sub_call(OSS, 900, 300, completion_tokens_details={"reasoning_tokens": 80}),
    sub_call(SCOUT, 2000, 60, prompt_tokens_details={"cached_tokens": 1500}),
    sub_call(LLAMA, 1500, 200),
]
PROMPT, COMPLETION = 4520, 564  # the sub-calls' sums


def top_usage(prompt: int = PROMPT, completion: int = COMPLETION) -> dict[str, Any]:
    return {
        "queue_time": 0.2,
        "prompt_tokens": prompt,
        "prompt_time": 0.3,
        "completion_tokens": completion,
        "completion_time": 1.0,
        "total_tokens": prompt + completion,
        "total_time": 1.3,
    }


def compound_json(usage: dict[str, Any], sub_calls: list[dict[str, Any]]) -> bytes:
    message = {
        "role": "assistant",
        "content": "It is 18C and sunny.",
        "reasoning": "<think>search the weather</think>",
        "executed_tools": [
            {"index": 0, "type": "search", "arguments": '{"query": "weather"}', "output": "..."}
        ],
    }
    body = {
        "id": "stub",
        "object": "chat.completion",
        "created": 1780000000,
        "model": "groq/compound",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": usage,
        "usage_breakdown": {"models": sub_calls},
        "system_fingerprint": None,
        "x_groq": {"id": "stub"},
    }
    return json.dumps(body).encode()


def compound_stream(usage: dict[str, Any], sub_calls: list[dict[str, Any]]) -> bytes:
    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        return {
            "id": "stub",
            "object": "chat.completion.chunk",
            "created": 1780000000,
            "model": "groq/compound",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }

    last = chunk({}, "stop", x_groq={"usage": usage, "usage_breakdown": {"models": sub_calls}})
    events = [chunk({"role": "assistant", "reasoning": "<think>"}), chunk({"content": "18C."})]
    data = [json.dumps(event) for event in (*events, last)] + ["[DONE]"]
    return "".join(f"data: {d}\n\n" for d in data).encode()
