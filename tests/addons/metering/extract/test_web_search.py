"""Server-side web searches counted per call (``Usage.web_search``): Anthropic's
``usage.server_tool_use.web_search_requests`` (JSON, and cumulative in a stream's
``message_delta``: counted once), OpenAI and xAI Responses ``web_search_call`` output
items (from the final response or the ``output_item.done`` events, never both), the real
recordings, and the checks that make an unusable count invalid."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from addons.metering.extract import new_extractor
from addons.metering.usage import Usage
from tests.support.recordings import recording as _recording

MESSAGES = "/v1/messages"
RESPONSES = "/v1/responses"
SSE = "text/event-stream"
JSON = "application/json"


def _read(flavor: str, path: str, content_type: str, body: bytes, seed: int = 0) -> Usage:
    """The usage of ``body`` fed in random pieces (a count must not depend on them)."""
    ext = new_extractor(flavor, path=path, content_type=content_type)
    rng, at = random.Random(seed), 0
    while at < len(body):
        step = rng.randint(1, 64)
        ext.feed(body[at : at + step])
        at += step
    usage = ext.finish()
    assert ext.problems == [] and usage is not None
    return usage


def _sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(
        f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode() for kind, data in events
    )


# -- Anthropic ---------------------------------------------------------------------------

ANTHROPIC_USAGE = {
    "input_tokens": 31772,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
    "output_tokens": 644,
    "server_tool_use": {"web_search_requests": 3},
}


def _anthropic_message(usage: dict[str, Any]) -> dict[str, Any]:
    return {"id": "msg_01ws", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-20250514", "content": [{"type": "text", "text": "Hi"}],
            "stop_reason": "end_turn", "usage": usage}  # fmt: skip


def _anthropic_stream(start_searches: int | None, delta_usage: dict[str, Any]) -> bytes:
    start_usage: dict[str, Any] = {"input_tokens": 2050, "cache_creation_input_tokens": 0,
                                   "cache_read_input_tokens": 0, "output_tokens": 1}  # fmt: skip
    if start_searches is not None:
        start_usage["server_tool_use"] = {"web_search_requests": start_searches}
    message = {**_anthropic_message(start_usage), "content": [], "stop_reason": None}
    block = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}
    return _sse(
        ("message_start", {"type": "message_start", "message": message}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": block}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "input_json_delta",
                                           "partial_json": '{"query": "news"}'}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": delta_usage}),
        ("message_stop", {"type": "message_stop"}),
    )  # fmt: skip


def test_anthropic_json_counts_its_web_search_requests() -> None:
    body = json.dumps(_anthropic_message(ANTHROPIC_USAGE)).encode()
    usage = _read("anthropic", MESSAGES, JSON, body)
    assert (usage.input, usage.output, usage.web_search, usage.invalid) == (31772, 644, 3, None)
    assert usage.total == 31772 + 644  # searches are calls, not tokens


@pytest.mark.parametrize("start", [None, 0], ids=["absent-at-start", "zero-at-start"])
@pytest.mark.parametrize("seed", range(3))
def test_anthropic_stream_counts_the_cumulative_searches_once(start: int | None, seed: int) -> None:
    """``message_delta`` carries the call's searches cumulatively (with the input figures
    repeated): 3, not 0 and not 3 added to ``message_start``'s 0."""
    usage = _read("anthropic", MESSAGES, SSE, _anthropic_stream(start, ANTHROPIC_USAGE), seed)
    assert (usage.input, usage.output, usage.web_search) == (31772, 644, 3)
    assert not usage.partial and usage.invalid is None


def test_anthropic_stream_cut_before_message_delta_keeps_the_start_figure() -> None:
    body = _anthropic_stream(0, ANTHROPIC_USAGE).split(b"event: message_delta")[0]
    usage = _read("anthropic", MESSAGES, SSE, body)
    assert usage.partial and usage.web_search == 0


def test_anthropic_web_fetch_is_not_counted() -> None:
    """Web fetch costs only the fetched content's tokens: no per-call fee to meter."""
    fetched = {**ANTHROPIC_USAGE, "server_tool_use": {"web_search_requests": 0,
                                                      "web_fetch_requests": 2}}  # fmt: skip
    usage = _read("anthropic", MESSAGES, JSON, json.dumps(_anthropic_message(fetched)).encode())
    assert usage.web_search == 0 and usage.invalid is None


@pytest.mark.parametrize("bad", [-1, 2.5, "3", True, 10_001, 10**12])
def test_an_unusable_search_count_makes_the_report_invalid(bad: object) -> None:
    raw = {**ANTHROPIC_USAGE, "server_tool_use": {"web_search_requests": bad}}
    usage = _read("anthropic", MESSAGES, JSON, json.dumps(_anthropic_message(raw)).encode())
    assert usage.invalid is not None and "web" in usage.invalid


# -- OpenAI / xAI Responses ----------------------------------------------------------------


def test_the_real_openai_web_search_recording_counts_one_search() -> None:
    meta, body = _recording("openai/responses-gpt-5-web-search-cached")
    usage = _read(meta["flavor"], meta["request"]["path"], meta["response"]["content_type"], body)
    kinds = [o["type"] for o in json.loads(body)["output"]]
    assert kinds.count("web_search_call") == usage.web_search == 1
    assert (usage.input, usage.cached_input) == (851, 8448) and usage.invalid is None


@pytest.mark.parametrize("seed", range(3))
def test_the_real_openai_web_search_stream_counts_its_search_once(seed: int) -> None:
    """The stream names the search in ``response.output_item.done`` and again in
    ``response.completed``'s output: one search, not two."""
    meta, body = _recording("openai/responses-sse-gpt-5-web-search-cached")
    assert body.count(b'"type":"web_search_call"') >= 2
    usage = _read(meta["flavor"], meta["request"]["path"], meta["response"]["content_type"],
                  body, seed)  # fmt: skip
    assert usage.web_search == 1 and not usage.partial and usage.invalid is None


def test_the_real_xai_web_search_recording_counts_one_search() -> None:
    """xAI's Responses output names the search as OpenAI's does;
    ``num_server_side_tools_used`` (every server-side tool) agrees here."""
    meta, body = _recording("xai/responses-grok-web-search")
    usage = _read(meta["flavor"], meta["request"]["path"], meta["response"]["content_type"], body)
    assert usage.web_search == meta["provider_usage"]["num_server_side_tools_used"] == 1
    assert (usage.input, usage.cached_input, usage.output) == (994, 947, 583)


def test_a_file_search_stream_counts_no_web_search() -> None:
    meta, body = _recording("openai/responses-sse-gpt-5-mini-file-search")
    usage = _read(meta["flavor"], meta["request"]["path"], meta["response"]["content_type"], body)
    assert usage.web_search == 0


def _search_item(n: int) -> dict[str, Any]:
    return {"type": "web_search_call", "id": f"ws_{n}", "status": "completed",
            "action": {"type": "search", "query": f"q{n}"}}  # fmt: skip


RESPONSE_USAGE = {"input_tokens": 100, "output_tokens": 20}


def _responses_stream(
    done: list[dict[str, Any]], final_output: list[dict[str, Any]] | None
) -> bytes:
    response: dict[str, Any] = {"id": "resp_1", "object": "response", "model": "gpt-5",
                                "status": "completed", "usage": RESPONSE_USAGE}  # fmt: skip
    if final_output is not None:
        response["output"] = final_output
    events = [("response.created", {"type": "response.created",
                                    "response": {**response, "status": "in_progress",
                                                 "usage": None, "output": []}})]  # fmt: skip
    for i, item in enumerate(done):
        done_event = {"type": "response.output_item.done", "output_index": i, "item": item}
        events.append(("response.output_item.done", done_event))
    events.append(("response.completed", {"type": "response.completed", "response": response}))
    return _sse(*events)


def test_responses_stream_counts_the_final_output_not_the_done_events_too() -> None:
    items = [_search_item(1), _search_item(2)]
    usage = _read("openai", RESPONSES, SSE, _responses_stream(items, items))
    assert usage.web_search == 2


def test_responses_stream_without_a_final_output_counts_each_done_item_once() -> None:
    """A relay that drops ``response.completed``'s output: the done events count, a
    repeated one (same id) once."""
    items = [_search_item(1), _search_item(2), _search_item(2)]
    usage = _read("openai", RESPONSES, SSE, _responses_stream(items, None))
    assert usage.web_search == 2


def test_responses_json_counts_web_search_call_items() -> None:
    body = {"id": "resp_1", "object": "response", "model": "gpt-5", "status": "completed",
            "output": [_search_item(1), {"type": "message", "content": []}, _search_item(2),
                       _search_item(3)], "usage": RESPONSE_USAGE}  # fmt: skip
    usage = _read("openai", RESPONSES, JSON, json.dumps(body).encode())
    assert usage.web_search == 3 and usage.total == 120
