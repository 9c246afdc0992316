"""Documented response payloads, one row per provider/API field mapping.

Payload shapes follow each provider's API reference examples (OpenAI Chat Completions,
Completions, Embeddings and Responses; Anthropic Messages and its streaming guide;
Gemini generateContent/streamGenerateContent; Azure OpenAI, Mistral, Groq, DeepSeek,
OpenRouter, vLLM and Ollama docs). docs/token-model.md documents exactly these rows
(tests/addons/metering/extract/test_init.py checks that the table names every case).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Case:
    id: str  # provider/API, as in the docs table
    flavor: str
    path: str
    content_type: str | None
    body: bytes
    expected: dict[str, Any]  # Usage fields
    text: str  # expected output_text()
    streaming: bool = False
    notes: list[str] = field(default_factory=list)


def sse(*events: Any, crlf: bool = False) -> bytes:
    """SSE bytes: an item is a payload (dict -> JSON data), a string (raw data), or an
    ``(event_name, payload)`` pair."""
    out = []
    for item in events:
        name, payload = item if isinstance(item, tuple) else (None, item)
        data = payload if isinstance(payload, str) else json.dumps(payload)
        lines = ([f"event: {name}"] if name else []) + [f"data: {data}"]
        out.append("\n".join(lines) + "\n\n")
    text = "".join(out)
    return (text.replace("\n", "\r\n") if crlf else text).encode()


def js(obj: Any) -> bytes:
    return json.dumps(obj, indent=2).encode()


# --- OpenAI ------------------------------------------------------------------------------

_CHAT_ID = "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"


def _chat_chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict:
    return {
        "id": _CHAT_ID,
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": "gpt-4o-2024-08-06",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }


OPENAI_CHAT_JSON = Case(
    id="OpenAI Chat Completions (JSON)",
    flavor="openai",
    path="/v1/chat/completions",
    content_type="application/json",
    body=js(
        {
            "id": _CHAT_ID,
            "object": "chat.completion",
            "created": 1741570283,
            "model": "o3-mini-2025-01-31",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "The image shows a wooden boardwalk.",
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 2006,
                "completion_tokens": 1843,
                "total_tokens": 3849,
                "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 1024,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
        }
    ),
    expected=dict(
        input=86,
        cached_input=1920,
        cache_write=0,
        output=1843,
        reasoning=1024,
        model="o3-mini-2025-01-31",
        response_id=_CHAT_ID,
    ),
    text="The image shows a wooden boardwalk.",
)

OPENAI_CHAT_STREAM = Case(
    id="OpenAI Chat Completions (stream, include_usage)",
    flavor="openai",
    path="/v1/chat/completions",
    content_type="text/event-stream; charset=utf-8",
    streaming=True,
    body=sse(
        _chat_chunk({"role": "assistant", "content": "", "refusal": None}, usage=None),
        _chat_chunk({"content": "Hello"}, usage=None),
        _chat_chunk({"content": " there, ünïcode ✓"}, usage=None),
        _chat_chunk({}, "stop", usage=None),
        {
            "id": _CHAT_ID,
            "object": "chat.completion.chunk",
            "created": 1741570283,
            "model": "gpt-4o-2024-08-06",
            "choices": [],
            "usage": {
                "prompt_tokens": 1117,
                "completion_tokens": 46,
                "total_tokens": 1163,
                "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
            },
        },
        "[DONE]",
    ),
    expected=dict(
        input=93,
        cached_input=1024,
        cache_write=0,
        output=46,
        reasoning=0,
        model="gpt-4o-2024-08-06",
        response_id=_CHAT_ID,
    ),
    text="Hello there, ünïcode ✓",
)

# Audio (gpt-4o-audio-preview, gpt-audio): OpenAI's audio guide's response shape. The
# answer is audio (``message.audio``: id, base64 data, transcript), ``content`` is null;
# the details split prompt and completion by modality (``text_tokens`` + ``audio_tokens``
# = the total, as in the real recording openai/chat-gpt-4o-audio-input).
_AUDIO_ID = "chatcmpl-AJ7tfQDq8V6lD3nkpW6S1xqTgTLqB"
_AUDIO_USAGE = {
    "prompt_tokens": 81,
    "completion_tokens": 181,
    "total_tokens": 262,
    "prompt_tokens_details": {
        "cached_tokens": 0,
        "audio_tokens": 44,
        "text_tokens": 37,
        "image_tokens": 0,
    },
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 139,
        "text_tokens": 42,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
_AUDIO_EXPECTED = dict(
    input=37,
    cached_input=0,
    cache_write=0,
    audio_input=44,
    output=42,
    audio_output=139,
    reasoning=0,
    model="gpt-4o-audio-preview-2024-12-17",
    response_id=_AUDIO_ID,
)

OPENAI_CHAT_AUDIO_JSON = Case(
    id="OpenAI Chat Completions with audio (JSON)",
    flavor="openai",
    path="/v1/chat/completions",
    content_type="application/json",
    body=js(
        {
            "id": _AUDIO_ID,
            "object": "chat.completion",
            "created": 1729018898,
            "model": "gpt-4o-audio-preview-2024-12-17",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "refusal": None,
                        "audio": {
                            "id": "audio_6710a3d2b6a08190a4e4d0b0ce5a3bd7",
                            "data": "UklGRiQAAABXQVZFZm10IBAAAAABAAEA",
                            "expires_at": 1729022498,
                            "transcript": "Yes, golden retrievers are known to be friendly.",
                        },
                    },
                    "finish_reason": "stop",
                }
            ],
            "usage": _AUDIO_USAGE,
            "system_fingerprint": "fp_4eafc16369",
        }
    ),
    expected=_AUDIO_EXPECTED,
    text="",
)


def _audio_chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict:
    return {
        **_chat_chunk(delta, finish, **extra),
        "id": _AUDIO_ID,
        "model": "gpt-4o-audio-preview-2024-12-17",
    }


OPENAI_CHAT_AUDIO_STREAM = Case(
    id="OpenAI Chat Completions with audio (stream, include_usage)",
    flavor="openai",
    path="/v1/chat/completions",
    content_type="text/event-stream; charset=utf-8",
    streaming=True,
    body=sse(
        _audio_chunk({"role": "assistant", "content": None, "refusal": None}, usage=None),
        _audio_chunk({"audio": {"id": "audio_6710a3d2", "transcript": "Yes, golden"}}, usage=None),
        _audio_chunk({"audio": {"data": "UklGRiQAAABXQVZF"}}, usage=None),
        _audio_chunk({"audio": {"expires_at": 1729022498}}, "stop", usage=None),
        {**_audio_chunk({}), "choices": [], "usage": _AUDIO_USAGE},
        "[DONE]",
    ),
    expected=_AUDIO_EXPECTED,
    text="",
)

_CMPL = {
    "id": "cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7",
    "object": "text_completion",
    "created": 1589478378,
    "model": "gpt-3.5-turbo-instruct",
    "system_fingerprint": "fp_44709d6fcb",
}

OPENAI_COMPLETIONS_JSON = Case(
    id="OpenAI Completions, legacy (JSON)",
    flavor="openai",
    path="/v1/completions",
    content_type="application/json",
    body=js(
        {
            **_CMPL,
            "choices": [
                {
                    "text": "\n\nThis is indeed a test",
                    "index": 0,
                    "logprobs": None,
                    "finish_reason": "length",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
        }
    ),
    expected=dict(
        input=5,
        cached_input=0,
        cache_write=0,
        output=7,
        reasoning=0,
        model="gpt-3.5-turbo-instruct",
        response_id="cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7",
    ),
    text="\n\nThis is indeed a test",
)

OPENAI_COMPLETIONS_STREAM = Case(
    id="OpenAI Completions, legacy (stream)",
    flavor="openai",
    path="/v1/completions",
    content_type="text/event-stream",
    streaming=True,
    body=sse(
        {**_CMPL, "choices": [{"text": "This", "index": 0, "finish_reason": None}]},
        {**_CMPL, "choices": [{"text": " is a test", "index": 0, "finish_reason": "length"}]},
        {
            **_CMPL,
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
        },
        "[DONE]",
    ),
    expected=dict(
        input=5,
        cached_input=0,
        cache_write=0,
        output=4,
        reasoning=0,
        model="gpt-3.5-turbo-instruct",
        response_id="cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7",
    ),
    text="This is a test",
)

OPENAI_EMBEDDINGS = Case(
    id="OpenAI Embeddings",
    flavor="openai",
    path="/v1/embeddings",
    content_type="application/json",
    body=js(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "embedding": [0.0023064255, -0.009327292], "index": 0}
            ],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 8, "total_tokens": 8},
        }
    ),
    expected=dict(
        input=8,
        cached_input=0,
        cache_write=0,
        output=0,
        reasoning=0,
        model="text-embedding-3-small",
        response_id=None,
    ),
    text="",
)

_RESP_ID = "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b"


def _response(status: str, usage: dict | None, text: str = "") -> dict:
    output = []
    if text:
        output = [
            {
                "type": "message",
                "id": "msg_67ccd2bf17f0819081ff3bb2cf6508e6",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
    return {
        "id": _RESP_ID,
        "object": "response",
        "created_at": 1741476542,
        "status": status,
        "model": "gpt-4.1-2025-04-14",
        "output": output,
        "usage": usage,
    }


_RESP_USAGE = {
    "input_tokens": 36,
    "input_tokens_details": {"cached_tokens": 10},
    "output_tokens": 87,
    "output_tokens_details": {"reasoning_tokens": 30},
    "total_tokens": 123,
}

OPENAI_RESPONSES_JSON = Case(
    id="OpenAI Responses (JSON)",
    flavor="openai",
    path="/v1/responses",
    content_type="application/json",
    body=js(_response("completed", _RESP_USAGE, "In a peaceful grove beneath a silver moon")),
    expected=dict(
        input=26,
        cached_input=10,
        cache_write=0,
        output=87,
        reasoning=30,
        model="gpt-4.1-2025-04-14",
        response_id=_RESP_ID,
    ),
    text="In a peaceful grove beneath a silver moon",
)


def _delta(seq: int, text: str) -> tuple[str, dict]:
    return (
        "response.output_text.delta",
        {
            "type": "response.output_text.delta",
            "item_id": "msg_67c",
            "output_index": 0,
            "content_index": 0,
            "delta": text,
            "sequence_number": seq,
        },
    )


OPENAI_RESPONSES_STREAM = Case(
    id="OpenAI Responses (stream, response.completed)",
    flavor="openai",
    path="/v1/responses",
    content_type="text/event-stream",
    streaming=True,
    body=sse(
        (
            "response.created",
            {
                "type": "response.created",
                "response": _response("in_progress", None),
                "sequence_number": 0,
            },
        ),
        _delta(1, "Hi"),
        _delta(2, " there"),
        (
            "response.completed",
            {
                "type": "response.completed",
                "response": _response("completed", _RESP_USAGE, "Hi there"),
                "sequence_number": 3,
            },
        ),
    ),
    expected=dict(
        input=26,
        cached_input=10,
        cache_write=0,
        output=87,
        reasoning=30,
        model="gpt-4.1-2025-04-14",
        response_id=_RESP_ID,
    ),
    text="Hi there",
)

OPENAI_RESPONSES_INCOMPLETE = Case(
    id="OpenAI Responses (stream, response.incomplete)",
    flavor="openai",
    path="/v1/responses",
    content_type="text/event-stream",
    streaming=True,
    body=sse(
        (
            "response.created",
            {"type": "response.created", "response": _response("in_progress", None)},
        ),
        _delta(1, "Truncated"),
        (
            "response.incomplete",
            {
                "type": "response.incomplete",
                "response": {
                    **_response(
                        "incomplete",
                        {
                            **_RESP_USAGE,
                            "output_tokens": 16,
                            "output_tokens_details": {"reasoning_tokens": 12},
                            "total_tokens": 52,
                        },
                    ),
                    "incomplete_details": {"reason": "max_output_tokens"},
                },
            },
        ),
    ),
    expected=dict(
        input=26,
        cached_input=10,
        cache_write=0,
        output=16,
        reasoning=12,
        model="gpt-4.1-2025-04-14",
        response_id=_RESP_ID,
    ),
    text="Truncated",
)

# --- OpenAI-compatible providers ----------------------------------------------------------

AZURE_CHAT_JSON = Case(
    id="Azure OpenAI Chat Completions",
    flavor="openai",
    path="/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
    content_type="application/json",
    body=js(
        {
            "choices": [
                {
                    "content_filter_results": {"hate": {"filtered": False, "severity": "safe"}},
                    "finish_reason": "stop",
                    "index": 0,
                    "message": {"content": "Yes, Azure supports it.", "role": "assistant"},
                }
            ],
            "created": 1724892291,
            "id": "chatcmpl-A1hxXO1lTP5AaN4e7NrzxrBjpXYpG",
            "model": "gpt-4o-2024-05-13",
            "object": "chat.completion",
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
            "system_fingerprint": "fp_abc28019ad",
            "usage": {
                "completion_tokens": 8,
                "prompt_tokens": 1520,
                "total_tokens": 1528,
                "prompt_tokens_details": {"cached_tokens": 1408},
            },
        }
    ),
    expected=dict(
        input=112,
        cached_input=1408,
        cache_write=0,
        output=8,
        reasoning=0,
        model="gpt-4o-2024-05-13",
        response_id="chatcmpl-A1hxXO1lTP5AaN4e7NrzxrBjpXYpG",
    ),
    text="Yes, Azure supports it.",
)

_MISTRAL = {"id": "cf79f7daaee244b1a0ae5c7b1444424a", "object": "chat.completion.chunk"}
MISTRAL_CHAT_STREAM = Case(
    id="Mistral Chat (stream, usage in last chunk)",
    flavor="openai",
    path="/v1/chat/completions",
    content_type="text/event-stream",
    streaming=True,
    body=sse(
        {
            **_MISTRAL,
            "created": 1721000000,
            "model": "mistral-large-latest",
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            ],
        },
        {
            **_MISTRAL,
            "created": 1721000000,
            "model": "mistral-large-latest",
            "choices": [{"index": 0, "delta": {"content": "Bonjour"}, "finish_reason": None}],
        },
        {
            **_MISTRAL,
            "created": 1721000000,
            "model": "mistral-large-latest",
            "choices": [{"index": 0, "delta": {"content": "!"}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": 171,
                "total_tokens": 174,
                "completion_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 128},
            },
        },
        "[DONE]",
    ),
    expected=dict(
        input=43,
        cached_input=128,
        cache_write=0,
        output=3,
        reasoning=0,
        model="mistral-large-latest",
        response_id="cf79f7daaee244b1a0ae5c7b1444424a",
    ),
    text="Bonjour!",
)

_GROQ = {
    "id": "chatcmpl-ec3c1a7a-6c8b-4bd0-8d35-c4bdb0a5f0a4",
    "object": "chat.completion.chunk",
    "created": 1730241104,
    "model": "llama-3.3-70b-versatile",
    "system_fingerprint": "fp_9a8b91ba77",
}
GROQ_CHAT_STREAM = Case(
    id="Groq Chat (stream, x_groq.usage)",
    flavor="openai",
    path="/openai/v1/chat/completions",
    content_type="text/event-stream",
    streaming=True,
    body=sse(
        {
            **_GROQ,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            ],
            "x_groq": {"id": "req_01jbd6g2qdfw2adyrt2az8hz4w"},
        },
        {
            **_GROQ,
            "choices": [{"index": 0, "delta": {"content": "Fast"}, "finish_reason": None}],
        },
        {
            **_GROQ,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "x_groq": {
                "id": "req_01jbd6g2qdfw2adyrt2az8hz4w",
                "usage": {
                    "queue_time": 0.025959581,
                    "prompt_tokens": 24,
                    "prompt_time": 0.001855361,
                    "completion_tokens": 377,
                    "completion_time": 0.30160000000000003,
                    "total_tokens": 401,
                    "total_time": 0.303455361,
                },
            },
        },
        "[DONE]",
    ),
    expected=dict(
        input=24,
        cached_input=0,
        cache_write=0,
        output=377,
        reasoning=0,
        model="llama-3.3-70b-versatile",
        response_id=_GROQ["id"],
    ),
    text="Fast",
)

DEEPSEEK_CHAT_JSON = Case(
    id="DeepSeek Chat (prompt_cache_hit_tokens)",
    flavor="openai",
    path="/chat/completions",
    content_type="application/json",
    body=js(
        {
            "id": "930c60df-bf64-41c9-a88e-3ec75f81e00e",
            "object": "chat.completion",
            "created": 1705651092,
            "model": "deepseek-reasoner",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "reasoning_content": "The user greets me.",
                        "content": "Hello! How can I help you today?",
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 16,
                "completion_tokens": 10,
                "total_tokens": 26,
                "prompt_cache_hit_tokens": 6,
                "prompt_cache_miss_tokens": 10,
                "completion_tokens_details": {"reasoning_tokens": 5},
            },
            "system_fingerprint": "fp_1c0ec89ca6",
        }
    ),
    expected=dict(
        input=10,
        cached_input=6,
        cache_write=0,
        output=10,
        reasoning=5,
        model="deepseek-reasoner",
        response_id="930c60df-bf64-41c9-a88e-3ec75f81e00e",
    ),
    text="The user greets me.Hello! How can I help you today?",
)

OPENROUTER_CHAT_JSON = Case(
    id="OpenRouter Chat (cache_write_tokens)",
    flavor="openai",
    path="/api/v1/chat/completions",
    content_type="application/json",
    body=js(
        {
            "id": "gen-1744215270-7H5VrtqzGnBtoM5Vzsq9",
            "provider": "Anthropic",
            "model": "anthropic/claude-sonnet-4",
            "object": "chat.completion",
            "created": 1744215270,
            "choices": [
                {
                    "logprobs": None,
                    "finish_reason": "stop",
                    "index": 0,
                    "message": {"role": "assistant", "content": "Sure.", "refusal": None},
                }
            ],
            "usage": {
                "prompt_tokens": 194,
                "completion_tokens": 2,
                "total_tokens": 196,
                "cost": 0.95,
                "cost_details": {"upstream_inference_cost": 19},
                "prompt_tokens_details": {
                    "cached_tokens": 40,
                    "cache_write_tokens": 100,
                    "audio_tokens": 0,
                },
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        }
    ),
    expected=dict(
        input=54,
        cached_input=40,
        cache_write=100,
        output=2,
        reasoning=0,
        model="anthropic/claude-sonnet-4",
        response_id="gen-1744215270-7H5VrtqzGnBtoM5Vzsq9",
    ),
    text="Sure.",
)

_VLLM = {
    "id": "chatcmpl-6d1a5d4c2b0e4b5f9e7b3d6a1c2f8e90",
    "object": "chat.completion.chunk",
    "created": 1735000000,
    "model": "meta-llama/Llama-3.1-8B-Instruct",
}
VLLM_CHAT_STREAM = Case(
    id="vLLM Chat (stream, prompt_tokens_details null)",
    flavor="openai",
    path="/v1/chat/completions",
    content_type="text/event-stream; charset=utf-8",
    streaming=True,
    body=sse(
        {**_VLLM, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {**_VLLM, "choices": [{"index": 0, "delta": {"content": "42"}, "finish_reason": None}]},
        {**_VLLM, "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "stop"}]},
        {
            **_VLLM,
            "choices": [],
            "usage": {
                "prompt_tokens": 30,
                "total_tokens": 32,
                "completion_tokens": 2,
                "prompt_tokens_details": None,
            },
        },
        "[DONE]",
    ),
    expected=dict(
        input=30,
        cached_input=0,
        cache_write=0,
        output=2,
        reasoning=0,
        model="meta-llama/Llama-3.1-8B-Instruct",
        response_id=_VLLM["id"],
    ),
    text="42",
)

OLLAMA_OPENAI_JSON = Case(
    id="Ollama (OpenAI-compatible /v1)",
    flavor="openai",
    path="/v1/chat/completions",
    content_type="application/json",
    body=js(
        {
            "id": "chatcmpl-626",
            "object": "chat.completion",
            "created": 1731000000,
            "model": "llama3.2",
            "system_fingerprint": "fp_ollama",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hi."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 26, "completion_tokens": 3, "total_tokens": 29},
        }
    ),
    expected=dict(
        input=26,
        cached_input=0,
        cache_write=0,
        output=3,
        reasoning=0,
        model="llama3.2",
        response_id="chatcmpl-626",
    ),
    text="Hi.",
)

OLLAMA_NATIVE_NDJSON = Case(
    id="Ollama native /api/chat (NDJSON stream)",
    flavor="openai",
    path="/api/chat",
    content_type="application/x-ndjson",
    streaming=True,
    body=b"\n".join(
        json.dumps(o).encode()
        for o in [
            {
                "model": "llama3.2",
                "created_at": "2023-08-04T08:52:19.385406455-07:00",
                "message": {"role": "assistant", "content": "The"},
                "done": False,
            },
            {
                "model": "llama3.2",
                "created_at": "2023-08-04T08:52:19.385406455-07:00",
                "message": {"role": "assistant", "content": " sky"},
                "done": False,
            },
            {
                "model": "llama3.2",
                "created_at": "2023-08-04T19:22:45.499127Z",
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "total_duration": 4883583458,
                "load_duration": 1334875,
                "prompt_eval_count": 26,
                "prompt_eval_duration": 342546000,
                "eval_count": 282,
                "eval_duration": 4535599000,
            },
        ]
    )
    + b"\n",
    expected=dict(
        input=26,
        cached_input=0,
        cache_write=0,
        output=282,
        reasoning=0,
        model="llama3.2",
        response_id=None,
    ),
    text="The sky",
)

# --- Anthropic ------------------------------------------------------------------------------

ANTHROPIC_JSON = Case(
    id="Anthropic Messages (JSON)",
    flavor="anthropic",
    path="/v1/messages",
    content_type="application/json",
    body=js(
        {
            "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-20250514",
            "content": [
                {"type": "thinking", "thinking": "Let me think.", "signature": "EqQBCgIYAh"},
                {"type": "text", "text": "Hi! My name is Claude."},
                {
                    "type": "tool_use",
                    "id": "toolu_01A",
                    "name": "get_weather",
                    "input": {"location": "Paris"},
                },
            ],
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 2095,
                "cache_creation_input_tokens": 2051,
                "cache_read_input_tokens": 1800,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 2051,
                    "ephemeral_1h_input_tokens": 0,
                },
                "output_tokens": 503,
                "output_tokens_details": {"thinking_tokens": 120},
                "service_tier": "standard",
            },
        }
    ),
    expected=dict(
        input=2095,
        cached_input=1800,
        cache_write=2051,
        output=503,
        reasoning=120,
        model="claude-sonnet-4-20250514",
        response_id="msg_013Zva2CMHLNnXjNJJKqJ2EF",
    ),
    text='Let me think.Hi! My name is Claude.{"location": "Paris"}',
)


def _anthropic_stream(start_usage: dict, delta_usage: dict) -> bytes:
    return sse(
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": "claude-3-5-sonnet-20241022",
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hello"},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "!"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": delta_usage,
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    )


ANTHROPIC_STREAM = Case(
    id="Anthropic Messages (stream)",
    flavor="anthropic",
    path="/v1/messages",
    content_type="text/event-stream; charset=utf-8",
    streaming=True,
    body=_anthropic_stream({"input_tokens": 25, "output_tokens": 1}, {"output_tokens": 15}),
    expected=dict(
        input=25,
        cached_input=0,
        cache_write=0,
        output=15,
        reasoning=0,
        model="claude-3-5-sonnet-20241022",
        response_id="msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
    ),
    text="Hello!",
)

ANTHROPIC_STREAM_CACHE = Case(
    id="Anthropic Messages (stream, cache fields repeated in message_delta)",
    flavor="anthropic",
    path="/v1/messages",
    content_type="text/event-stream",
    streaming=True,
    body=_anthropic_stream(
        {
            "input_tokens": 5,
            "cache_creation_input_tokens": 42203,
            "cache_read_input_tokens": 1000,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 42203},
            "output_tokens": 1,
            "service_tier": "standard",
        },
        {
            "input_tokens": 5,
            "cache_creation_input_tokens": 42203,
            "cache_read_input_tokens": 1000,
            "output_tokens": 21,
            "server_tool_use": None,
        },
    ),
    expected=dict(
        input=5,
        cached_input=1000,
        cache_write=0,
        cache_write_1h=42203,  # all of it one-hour writes (cache_creation's breakdown)
        output=21,
        reasoning=0,
        model="claude-3-5-sonnet-20241022",
        response_id="msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
    ),
    text="Hello!",
)

# --- Gemini -----------------------------------------------------------------------------------

_GEM_USAGE = {
    "promptTokenCount": 1250,
    "candidatesTokenCount": 60,
    "totalTokenCount": 1510,
    "cachedContentTokenCount": 1000,
    "thoughtsTokenCount": 200,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1250}],
    "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 1000}],
}


def _gem_chunk(text: str, usage: dict | None, finish: str | None = None) -> dict:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if finish:
        candidate["finishReason"] = finish
    chunk: dict[str, Any] = {
        "candidates": [candidate],
        "modelVersion": "gemini-2.5-flash",
        "responseId": "mAitaLmkHPPlz7IPvtfUqQ4",
    }
    if usage is not None:
        chunk["usageMetadata"] = usage
    return chunk


GEMINI_JSON = Case(
    id="Gemini generateContent (JSON)",
    flavor="gemini",
    path="/v1beta/models/gemini-2.5-flash:generateContent",
    content_type="application/json; charset=UTF-8",
    body=js(_gem_chunk("AI learns patterns from data.", _GEM_USAGE, "STOP")),
    expected=dict(
        input=250,
        cached_input=1000,
        cache_write=0,
        output=260,
        reasoning=200,
        model="gemini-2.5-flash",
        response_id="mAitaLmkHPPlz7IPvtfUqQ4",
    ),
    text="AI learns patterns from data.",
)

_GEM_PARTIAL = {"promptTokenCount": 1250, "cachedContentTokenCount": 1000, "totalTokenCount": 1250}
_GEM_MID = {**_GEM_PARTIAL, "candidatesTokenCount": 12, "thoughtsTokenCount": 200}

GEMINI_SSE = Case(
    id="Gemini streamGenerateContent (alt=sse)",
    flavor="gemini",
    path="/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
    content_type="text/event-stream",
    streaming=True,
    body=sse(
        _gem_chunk("AI learns ", _GEM_PARTIAL),
        _gem_chunk("patterns ", _GEM_MID),
        _gem_chunk("from data.", _GEM_USAGE, "STOP"),
        crlf=True,
    ),
    expected=GEMINI_JSON.expected,
    text="AI learns patterns from data.",
)

GEMINI_JSON_ARRAY = Case(
    id="Gemini streamGenerateContent (JSON array)",
    flavor="gemini",
    path="/v1beta/models/gemini-2.5-flash:streamGenerateContent",
    content_type="application/json; charset=UTF-8",
    streaming=True,
    body=(
        "["
        + ",\r\n".join(
            json.dumps(c, indent=2)
            for c in [
                _gem_chunk("AI learns ", _GEM_PARTIAL),
                _gem_chunk("patterns ", _GEM_MID),
                _gem_chunk("from data.", _GEM_USAGE, "STOP"),
            ]
        )
        + "]"
    ).encode(),
    expected=GEMINI_JSON.expected,
    text="AI learns patterns from data.",
)

GEMINI_TOOL_USE = Case(
    id="Gemini with toolUsePromptTokenCount, model from path (Vertex AI)",
    flavor="gemini",
    path="/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.0-flash-001:generateContent",
    content_type="application/json",
    body=js(
        {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [{"functionCall": {"name": "find", "args": {"q": "x"}}}],
                    },
                    "finishReason": "STOP",
                }
            ],
            "usageMetadata": {
                "promptTokenCount": 100,
                "candidatesTokenCount": 20,
                "toolUsePromptTokenCount": 30,
                "totalTokenCount": 150,
            },
        }
    ),
    expected=dict(
        input=130,
        cached_input=0,
        cache_write=0,
        output=20,
        reasoning=0,
        model="gemini-2.0-flash-001",
        response_id=None,
    ),
    text='{"name": "find", "args": {"q": "x"}}',
)

# Audio in and out: per-modality lists (ModalityTokenCount). An audio prompt whose audio
# is mostly cached (gemini-2.5-flash), and a TTS model answering in audio only.
GEMINI_AUDIO_JSON = Case(
    id="Gemini generateContent with audio input (JSON)",
    flavor="gemini",
    path="/v1beta/models/gemini-2.5-flash:generateContent",
    content_type="application/json; charset=UTF-8",
    body=js(
        _gem_chunk(
            "The speaker names Marcelo.",
            {
                "promptTokenCount": 1300,
                "candidatesTokenCount": 40,
                "totalTokenCount": 1440,
                "cachedContentTokenCount": 1000,
                "thoughtsTokenCount": 100,
                "promptTokensDetails": [
                    {"modality": "TEXT", "tokenCount": 250},
                    {"modality": "AUDIO", "tokenCount": 1050},
                ],
                "cacheTokensDetails": [
                    {"modality": "TEXT", "tokenCount": 200},
                    {"modality": "AUDIO", "tokenCount": 800},
                ],
                "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 40}],
            },
            "STOP",
        )
    ),
    expected=dict(
        input=50,  # 1300 - 1000 cached - 250 uncached audio
        cached_input=200,  # 1000 read from the cache, 800 of them audio
        cached_audio_input=800,
        cache_write=0,
        audio_input=250,  # 1050 - 800
        output=140,
        audio_output=0,
        reasoning=100,
        model="gemini-2.5-flash",
        response_id="mAitaLmkHPPlz7IPvtfUqQ4",
    ),
    text="The speaker names Marcelo.",
)


def _tts_chunk(usage: dict[str, Any], finish: str | None = None) -> dict:
    pcm = {"inlineData": {"mimeType": "audio/L16;codec=pcm;rate=24000", "data": "AAAA"}}
    candidate: dict[str, Any] = {"content": {"parts": [pcm], "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": "gemini-2.5-flash-preview-tts",
        "responseId": "kXh2aOqDJ8a0nvgPpZ2e0Qs",
    }


_TTS_PROMPT = {
    "promptTokenCount": 12,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12}],
}

GEMINI_AUDIO_SSE = Case(
    id="Gemini streamGenerateContent with audio output (alt=sse, TTS)",
    flavor="gemini",
    path="/v1beta/models/gemini-2.5-flash-preview-tts:streamGenerateContent?alt=sse",
    content_type="text/event-stream",
    streaming=True,
    body=sse(
        _tts_chunk({**_TTS_PROMPT, "totalTokenCount": 12}),
        _tts_chunk(
            {
                **_TTS_PROMPT,
                "candidatesTokenCount": 560,
                "totalTokenCount": 572,
                "candidatesTokensDetails": [{"modality": "AUDIO", "tokenCount": 560}],
            },
            "STOP",
        ),
        crlf=True,
    ),
    expected=dict(
        input=12,
        cached_input=0,
        cache_write=0,
        audio_input=0,
        output=0,
        audio_output=560,
        reasoning=0,
        model="gemini-2.5-flash-preview-tts",
        response_id="kXh2aOqDJ8a0nvgPpZ2e0Qs",
    ),
    text="",
)

CASES = [
    OPENAI_CHAT_JSON,
    OPENAI_CHAT_STREAM,
    OPENAI_CHAT_AUDIO_JSON,
    OPENAI_CHAT_AUDIO_STREAM,
    OPENAI_COMPLETIONS_JSON,
    OPENAI_COMPLETIONS_STREAM,
    OPENAI_EMBEDDINGS,
    OPENAI_RESPONSES_JSON,
    OPENAI_RESPONSES_STREAM,
    OPENAI_RESPONSES_INCOMPLETE,
    AZURE_CHAT_JSON,
    MISTRAL_CHAT_STREAM,
    GROQ_CHAT_STREAM,
    DEEPSEEK_CHAT_JSON,
    OPENROUTER_CHAT_JSON,
    VLLM_CHAT_STREAM,
    OLLAMA_OPENAI_JSON,
    OLLAMA_NATIVE_NDJSON,
    ANTHROPIC_JSON,
    ANTHROPIC_STREAM,
    ANTHROPIC_STREAM_CACHE,
    GEMINI_JSON,
    GEMINI_SSE,
    GEMINI_JSON_ARRAY,
    GEMINI_TOOL_USE,
    GEMINI_AUDIO_JSON,
    GEMINI_AUDIO_SSE,
]
STREAM_CASES = [c for c in CASES if c.streaming]
