"""What a request may cost, read without parsing its JSON."""

from __future__ import annotations

import json

import pytest

from addons.metering.reserve import DEFAULT_OUTPUT_RESERVE, estimate_request


@pytest.mark.parametrize(
    ("flavor", "path", "body", "model", "output"),
    [
        (
            "openai",
            "/v1/chat/completions",
            {
                "messages": [{"role": "user", "content": 'say "model": "x"'}],
                "model": "gpt-4o",
                "max_tokens": 64,
            },
            "gpt-4o",
            64,
        ),
        (
            "openai",
            "/v1/chat/completions",
            {"model": "o3", "max_completion_tokens": 900},
            "o3",
            900,
        ),
        ("openai", "/v1/responses", {"model": "gpt-4.1", "max_output_tokens": 5}, "gpt-4.1", 5),
        (
            "anthropic",
            "/v1/messages",
            {"model": "claude-sonnet-4-5", "max_tokens": 1024},
            "claude-sonnet-4-5",
            1024,
        ),
        (
            "gemini",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            {"generationConfig": {"maxOutputTokens": 77}},
            "gemini-2.5-flash",
            77,
        ),
        ("openai", "/v1/chat/completions", {"messages": []}, "", DEFAULT_OUTPUT_RESERVE),
    ],  # fmt: skip
)
def test_estimate(flavor: str, path: str, body: dict, model: str, output: int) -> None:
    raw = json.dumps(body).encode()
    est = estimate_request(flavor, path, raw)
    assert (est.model, est.output) == (model, output)
    assert est.input == -(-len(raw) // 4)


def test_spaced_and_hostile_bodies() -> None:
    assert estimate_request("openai", "/", b'{"model" :  "m" , "max_tokens" : 7}')[:3:2] == ("m", 7)
    assert estimate_request("openai", "/", b'{"model": 5, "max_tokens": "x"}').output == (
        DEFAULT_OUTPUT_RESERVE
    )
    assert estimate_request("openai", "/", b'{"max_tokens": 99999999999}').output == (
        DEFAULT_OUTPUT_RESERVE
    )
    assert estimate_request("openai", "/", b"").input == 0


@pytest.mark.parametrize(
    ("model", "output"),
    [
        ("gpt-4o", 16_384),
        ("gpt-4o-mini-2024-07-18", 16_384),
        ("openai/gpt-4o", 16_384),  # a router's vendor prefix
        ("gpt-4.1-nano", 32_768),
        ("gpt-4-turbo", 4_096),
        ("o3-mini", 100_000),
        ("gpt-5-pro", 272_000),  # not gpt-5's 128,000 (OpenAI's model page)
        ("gpt-5-mini", 128_000),
        ("gpt-4.5-preview", 16_384),  # not gpt-4's 8,192
        ("some-local-model", DEFAULT_OUTPUT_RESERVE),  # unknown: not a bound (docs say so)
    ],
)
def test_a_call_without_an_output_bound_reserves_its_models_largest_output(
    model: str, output: int
) -> None:
    """Reserving 4,096 for a gpt-4o call that can write 16,384 let concurrent calls through
    a hard cap far beyond one call (the probe: 3 of 10 admitted at 10,000, 24,000 used)."""
    body = json.dumps({"model": model, "messages": []}).encode()
    assert estimate_request("openai", "/v1/chat/completions", body).output == output
