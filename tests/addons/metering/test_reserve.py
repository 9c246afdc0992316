"""What a request may cost, read without parsing its JSON."""

from __future__ import annotations

import json

import pytest

from addons.metering.reserve import (
    DEFAULT_OUTPUT_RESERVE,
    asks_standard_speed,
    estimate_request,
    requested_tier,
)


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


TOOL_USE = {"type": "tool_use", "id": "t1", "name": "summarize", "input": {"max_tokens": 10}}
PROPERTIES = {"max_tokens": {"type": "integer"}, "model": {"type": "string"}}
SCHEMA = {"type": "function", "function": {"name": "f", "parameters": {
    "type": "object", "properties": PROPERTIES, "required": ["max_tokens"]}}}  # fmt: skip


@pytest.mark.parametrize(
    ("flavor", "body", "model", "output"),
    [
        # A bound nested in the history (an Anthropic tool_use input) came first: it
        # replaced the request's own (10 reserved for a call of 2,000).
        (
            "anthropic",
            {
                "model": "claude-sonnet-4-5",
                "messages": [{"role": "assistant", "content": [TOOL_USE]}],
                "max_tokens": 2000,
            },
            "claude-sonnet-4-5",
            2000,
        ),
        # ... also when it is the only one: the call sets no bound of its own.
        (
            "openai",
            {"model": "gpt-4o", "messages": [{"role": "assistant", "content": [TOOL_USE]}]},
            "gpt-4o",
            16_384,
        ),
        # A JSON schema's property named max_tokens (not an integer) stopped the search.
        ("openai", {"model": "gpt-4o", "tools": [SCHEMA], "max_tokens": 50}, "gpt-4o", 50),
        (
            "openai",
            {"tools": [SCHEMA], "model": "gpt-4o", "max_completion_tokens": 70},
            "gpt-4o",
            70,
        ),
        # A nested "model" before the top-level one (Anthropic's order: max_tokens,
        # messages, model) named the wrong model.
        (
            "anthropic",
            {
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "assistant",
                        "content": [
                            {
                                "type": "tool_use",
                                "id": "t",
                                "name": "x",
                                "input": {"model": "gpt-4o-mini"},
                            }
                        ],
                    }
                ],
                "model": "claude-opus-4",
            },
            "claude-opus-4",
            5,
        ),
        # The common shapes, read without a full parse.
        (
            "openai",
            {
                "messages": [{"role": "user", "content": "x" * 5000}],
                "model": "gpt-4o",
                "max_tokens": 64,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            "gpt-4o",
            64,
        ),
        (
            "anthropic",
            {"max_tokens": 1024, "messages": [], "model": "claude-sonnet-4-5"},
            "claude-sonnet-4-5",
            1024,
        ),
    ],  # fmt: skip
)
def test_only_the_requests_own_keys_count(flavor: str, body: dict, model: str, output: int) -> None:
    est = estimate_request(flavor, "/v1/x", json.dumps(body).encode())
    assert (est.model, est.output) == (model, output)


def test_hostile_placements_of_the_bound() -> None:
    # A key whose name merely ends in max_tokens (an escaped quote inside it).
    assert estimate_request("openai", "/", b'{"model":"gpt-4o","a \\"max_tokens": 5}').output == (
        16_384
    )
    # Twice at the top level: the last one counts, as the providers' JSON parsers read it.
    body = b'{"max_tokens": 1, "model": "gpt-4o", "max_tokens": 5000}'
    assert estimate_request("openai", "/", body).output == 5000


@pytest.mark.parametrize(
    ("body", "output"),
    [
        ({"contents": [], "generationConfig": {"temperature": 1, "maxOutputTokens": 77}}, 77),
        ({"contents": [], "generation_config": {"max_output_tokens": 12}}, 12),
        # In a function call's arguments, not the config: the model's largest output.
        ({"contents": [{"parts": [{"functionCall": {"args": {"maxOutputTokens": 3}}}]}]}, 65_536),
        (
            {
                "contents": [
                    {
                        "parts": [
                            {"functionCall": {"args": {"generationConfig": {"maxOutputTokens": 3}}}}
                        ]
                    }
                ]
            },
            65_536,
        ),
        (
            {
                "contents": [{"parts": [{"functionCall": {"args": {"maxOutputTokens": 3}}}]}],
                "generationConfig": {"maxOutputTokens": 99},
            },
            99,
        ),
    ],  # fmt: skip
)
def test_gemini_reads_the_bound_in_its_generation_config(body: dict, output: int) -> None:
    path = "/v1beta/models/gemini-2.5-flash:generateContent"
    assert estimate_request("gemini", path, json.dumps(body).encode()).output == output


def test_an_azure_deployment_names_the_model_when_the_body_does_not() -> None:
    path = "/openai/deployments/prod-chat/chat/completions?api-version=2024-06-01"
    assert estimate_request("openai", path, b'{"messages": []}').model == "prod-chat"
    assert estimate_request("openai", path, b'{"model": "m", "messages": []}').model == "m"


@pytest.mark.parametrize(
    ("flavor", "body", "model", "output"),
    [
        # a key spelt with escapes is the same key to the provider's JSON parser
        ("openai", rb'{"mod\u0065l": "gpt-4o", "max_tokens": 70}', "gpt-4o", 70),
        ("openai", rb'{"model": "gpt-4o", "max\u005ftokens": 70}', "gpt-4o", 70),
        # numbers in exponent or fraction form that servers read as integers
        ("openai", b'{"model": "gpt-4o", "max_tokens": 5e3}', "gpt-4o", 5000),
        ("anthropic", b'{"model": "claude-x", "max_tokens": 1000.0}', "claude-x", 1000),
        ("gemini", b'{"generationConfig": {"maxOutputTokens": 2e3}}', "", 2000),
        # both bounds: servers differ in which one they honour, so the larger
        ("openai", b'{"model": "o3", "max_tokens": 1, "max_completion_tokens": 1000}', "o3", 1000),
        ("openai", b'{"model": "o3", "max_completion_tokens": 9, "max_tokens": 800}', "o3", 800),
        # non-ASCII text escaped as JSON does it needs no full parse and reads the same
        ("openai", rb'{"model": "gpt-4o", "input": "caf\u00e9 \u003c", "max_tokens": 7}',
         "gpt-4o", 7),
    ],
)  # fmt: skip
def test_spellings_that_hide_a_key_or_shrink_a_bound(
    flavor: str, body: bytes, model: str, output: int
) -> None:
    """Before: an escaped key was not seen (no model: no model's limit applied), ``5e3``
    reserved 5 tokens and the first of two bounds was taken even when the smaller."""
    got = estimate_request(flavor, "/v1/chat/completions", body)
    assert (got.model, got.output) == (model, output)


@pytest.mark.parametrize(
    ("flavor", "tools", "searches"),
    [
        ("anthropic", [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}], 3),
        ("anthropic", [{"type": "web_search_20250305", "name": "web_search"}], 5),
        ("openai", [{"type": "web_search"}], 5),  # no cap in OpenAI's tool: an estimate
        ("openai", [{"type": "web_search_preview"}, {"type": "file_search"}], 5),
        ("anthropic", [{"type": "custom", "name": "web_search_helper"}], 0),
        ("openai", [], 0),
    ],
)
def test_searches_a_call_may_run(flavor: str, tools: list[dict], searches: int) -> None:
    body = json.dumps({"model": "m", "max_tokens": 5, "tools": tools}).encode()
    assert estimate_request(flavor, "/v1/messages", body).searches == searches


@pytest.mark.parametrize(
    ("flavor", "path", "body", "output"),
    [
        pytest.param(
            "openai",
            "/v1/chat/completions",
            {"model": "gpt-4o", "n": 10, "max_completion_tokens": 100, "messages": []},
            1000,
            id="chat-n",
        ),
        pytest.param(
            "openai",
            "/v1/completions",
            {"model": "gpt-3.5-turbo-instruct", "prompt": ["a"] * 10, "max_tokens": 100},
            1000,
            id="legacy-prompt-list",
        ),
        pytest.param(
            "openai",
            "/v1/completions",
            {"model": "m", "prompt": [1, 2, 3], "best_of": 4, "n": 2, "max_tokens": 10},
            40,
            id="legacy-best-of-one-token-prompt",
        ),
        pytest.param(
            "gemini",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            {"generationConfig": {"candidateCount": 8, "maxOutputTokens": 100}},
            800,
            id="gemini-candidate-count",
        ),
        pytest.param(
            "openai",
            "/v1/chat/completions",
            {
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": '"n": 9'}],
                "max_tokens": 5,
            },
            5,
            id="n-in-a-message-only",
        ),
        pytest.param(
            "openai",
            "/v1/responses",
            {"model": "gpt-4o", "n": 4, "max_output_tokens": 100},
            100,
            id="responses-has-no-n",  # a stray n over-reserved x4
        ),
        pytest.param(
            "anthropic",
            "/v1/messages",
            {"model": "claude-sonnet-4-5", "n": 4, "max_tokens": 100},
            100,
            id="messages-has-no-n",
        ),
    ],
)
def test_each_answer_asked_for_reserves_its_bound(
    flavor: str, path: str, body: dict, output: int
) -> None:
    """20 concurrent calls with n=10 at a limit of 2,000 used 20,000: one output bound
    was reserved for ten answers (each billed)."""
    assert estimate_request(flavor, path, json.dumps(body).encode()).output == output


@pytest.mark.parametrize(
    ("flavor", "path", "body", "model", "output"),
    [
        pytest.param(
            "openai", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"},
            "text-embedding-3-small", 0, id="embeddings-no-output",
        ),
        pytest.param(
            "openai", "/api/embed", {"model": "nomic-embed-text", "input": "x"},
            "nomic-embed-text", 0, id="ollama-embed",
        ),
        pytest.param(
            "openai", "/api/chat", {"model": "llama3", "options": {"num_predict": 50}},
            "llama3", 50, id="ollama-num-predict",
        ),
        pytest.param(
            "openai", "/api/chat", {"model": "llama3", "options": {"num_predict": -1}},
            "llama3", DEFAULT_OUTPUT_RESERVE, id="ollama-unbounded",
        ),
        pytest.param(
            "gemini", "/v1beta/tunedModels/my-tuned-1:generateContent",
            {"generationConfig": {"maxOutputTokens": 30}}, "my-tuned-1", 30, id="gemini-tuned",
        ),
        pytest.param(
            "gemini", "/v1beta/models/gemini-2.5-flash:generateContent",
            {"generationConfig": {"maxOutputTokens": "50"}}, "gemini-2.5-flash", 50,
            id="gemini-bound-as-a-string",
        ),
    ],
)  # fmt: skip
def test_outputs_that_are_bounded_elsewhere(
    flavor: str, path: str, body: dict, model: str, output: int
) -> None:
    est = estimate_request(flavor, path, json.dumps(body).encode())
    assert (est.model, est.output) == (model, output)


def test_openai_max_tool_calls_bounds_the_searches() -> None:
    tools = [{"type": "web_search"}]
    body = {"model": "gpt-5", "tools": tools, "max_tool_calls": 1}
    assert estimate_request("openai", "/v1/responses", json.dumps(body).encode()).searches == 1
    body["max_tool_calls"] = 12
    assert estimate_request("openai", "/v1/responses", json.dumps(body).encode()).searches == 12
    del body["max_tool_calls"]
    assert estimate_request("openai", "/v1/responses", json.dumps(body).encode()).searches == 5


@pytest.mark.parametrize(
    ("path", "body", "output"),
    [
        pytest.param("/v1/chat/completions", {"max_output_tokens": 1}, 16_384,
                     id="responses-key-on-chat-ignored"),
        pytest.param("/v1/responses", {"max_tokens": 1}, 16_384,
                     id="chat-key-on-responses-ignored"),
        pytest.param("/v1/responses", {"max_output_tokens": 7}, 7, id="responses-own-key"),
        pytest.param("/v1/chat/completions", {"options": {"num_predict": 1}}, 16_384,
                     id="num-predict-on-openai-compatible-ignored"),
        pytest.param("/api/chat", {"max_tokens": 1}, 16_384,
                     id="chat-key-on-ollama-native-ignored"),
        pytest.param("/api/generate", {"options": {"num_predict": 9}}, 9, id="ollama-own-key"),
        # spelt as a percent-decoding server routes it (5,500 used at 1,000 before)
        pytest.param("/api/cha%74", {"max_tokens": 1}, 16_384, id="escaped-ollama-path"),
        pytest.param("//api/chat", {"max_tokens": 1}, 16_384, id="doubled-slash"),
        pytest.param("/v1/respons%65s", {"max_tokens": 1}, 16_384, id="escaped-responses"),
        pytest.param("/api/chat?x=1", {"options": {"num_predict": 5}}, 5, id="ollama-query"),
    ],
)  # fmt: skip
def test_only_the_bounds_the_endpoint_honours_count(path: str, body: dict, output: int) -> None:
    """A key the server ignores bounds nothing: ten calls with ``options.num_predict: 1``
    (or ``max_output_tokens: 1`` on chat) each reserved 1 token, wrote 500, and all ten
    were admitted at a limit of 1,000 (5,000 used)."""
    raw = json.dumps({"model": "gpt-4o", **body}).encode()
    assert estimate_request("openai", path, raw).output == output


@pytest.mark.parametrize("late", [False, True])
def test_a_bound_given_as_a_string_is_read_wherever_it_sits(late: bool) -> None:
    """``"max_tokens": "8000"`` is read as the server reads it, 8000, with the key early
    or late in the body. Before, early in the body it was missed: the model's default
    (4,096) was reserved, and six such calls overshot a 10,000-token hard limit by 14,000."""
    bound = b'"max_tokens": "8000"'
    messages = b'"messages": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]'
    parts = (
        [b'"model": "mistral-large"', messages, bound]
        if late
        else [b'"model": "mistral-large"', bound, messages]
    )
    body = b"{" + b", ".join(parts) + b"}"
    assert estimate_request("mistral", "/v1/chat/completions", body).output == 8000


@pytest.mark.parametrize(
    ("body", "tier"),
    [
        (b'{"model":"gpt-5","service_tier":"flex"}', "flex"),
        (b'{"model":"gpt-5","service_tier":"Priority"}', "priority"),
        (b'{"model":"gpt-5","service_tier":"auto"}', None),  # the provider picks
        (b'{"model":"claude","service_tier":"standard_only"}', "standard"),
        (b'{"model":"gpt-5.6-sol","service_tier":"fast"}', "priority"),  # renamed, the same
        (b'{"model":"gpt-6-astra","service_tier":"ultrafast"}', "ultrafast"),
        (b'{"model":"gpt-5"}', None),
        (b'{"model":"gpt-5","service_tier":7}', None),
        (b'{"service_tier": "flex"', None),  # not JSON: nothing asked
    ],
)
def test_the_tier_a_request_asks_for(body: bytes, tier: str | None) -> None:
    assert requested_tier(body) == tier


@pytest.mark.parametrize(
    ("body", "standard"),
    [
        (b'{"model":"claude-opus-4-6"}', True),  # no speed asked: runs at standard
        (b'{"model":"claude-opus-4-6","speed":"standard"}', True),
        (b'{"model":"claude-opus-4-6","speed":"fast"}', False),
        (b'{"model":"claude-opus-4-6","speed":"FAST"}', False),
        (b'{"model":"claude-opus-4-6","speed":"turbo"}', False),  # unknown: may run fast
        (b'{"messages":[{"role":"user","content":"\\"speed\\": \\"fast\\""}]}', True),
        (b'{"metadata":{"speed":"fast"},"model":"claude-opus-4-6"}', True),  # nested
        (b'{"speed":"f\\u0061st"}', False),  # escaped: parsed whole
        (b'{"speed":"standard","speed":"fast"}', False),  # twice: the parse's last wins
        (b'{"speed": "fast"', False),  # not JSON: anything may happen
    ],
)
def test_whether_a_request_can_run_fast(body: bytes, standard: bool) -> None:
    assert asks_standard_speed(body) is standard
