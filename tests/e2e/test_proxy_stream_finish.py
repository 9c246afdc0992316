"""A client that stops reading a stream at the end of its content still gets its call
billed on the provider's usage.

Providers send the usage after the content: OpenAI's chat usage chunk after the chunk
with ``finish_reason``, a Responses stream's ``response.completed`` after the output's
``.done`` events, Anthropic's ``message_delta`` after ``content_block_stop``. A client
that leaves there (``for chunk in stream: ... break``) closed before it, so the proxy
stored an estimate from the visible text: 1 output token for a reasoning model's 450.
The providers below wait before the usage, as a busy one may; the proxy now holds the
closing events until the usage has come (:mod:`addons.metering.streamfilter`).
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from aiohttp import web

from tests.conftest import KEYS, ProxyFactory
from tests.support.aioserver import serve_posts
from tests.support.proxy import MeterProxy, one_provider_catalog, write_catalog

PROMPT, OUTPUT, REASONING = 9, 450, 448
#: Between the finish chunk and the usage chunk: a client that breaks at the finish
#: is long gone by then, unless the proxy holds the finish back.
PAUSE = 0.5


def _sse(chunk: dict[str, Any] | str) -> bytes:
    return f"data: {chunk if isinstance(chunk, str) else json.dumps(chunk)}\n\n".encode()


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    with_usage = (body.get("stream_options") or {}).get("include_usage") is True
    base: dict[str, Any] = {
        "id": "chatcmpl-" + request.headers["x-call"],
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "o3-mini-2025-01-31",
    }
    if with_usage:
        base["usage"] = None
    resp = web.StreamResponse(
        headers={"content-type": "text/event-stream", "x-request-id": request.headers["x-call"]}
    )
    await resp.prepare(request)
    for word, finish in (("Hel", None), ("lo", None), (None, "stop")):
        delta = {} if word is None else {"content": word}
        await resp.write(
            _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    await asyncio.sleep(PAUSE)
    if with_usage:
        usage = {
            "prompt_tokens": PROMPT,
            "completion_tokens": OUTPUT,
            "total_tokens": PROMPT + OUTPUT,
            "completion_tokens_details": {"reasoning_tokens": REASONING},
        }
        await resp.write(_sse({**base, "choices": [], "usage": usage}))
    await resp.write(_sse("[DONE]"))
    await resp.write_eof()
    return resp


def _event(kind: str, body: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **body})}\n\n".encode()


_USAGE = {
    "input_tokens": PROMPT,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": OUTPUT,
    "output_tokens_details": {"reasoning_tokens": REASONING},
    "total_tokens": PROMPT + OUTPUT,
}


async def _responses(request: web.Request) -> web.StreamResponse:
    await request.read()
    call = request.headers["x-call"]
    response = {"id": "resp_" + call, "object": "response", "created_at": 1, "model": "o3"}
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed"}
    text = {"type": "output_text", "text": "Hello", "annotations": []}
    at = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    head = [
        _event(
            "response.created", {"response": {**response, "status": "in_progress", "output": []}}
        ),
        _event("response.output_item.added", {"output_index": 0, "item": {**item, "content": []}}),
        _event("response.output_text.delta", {**at, "delta": "Hello"}),
        _event("response.output_text.done", {**at, "text": "Hello"}),
        _event(
            "response.output_item.done", {"output_index": 0, "item": {**item, "content": [text]}}
        ),
    ]
    done = {
        **response,
        "status": "completed",
        "output": [{**item, "content": [text]}],
        "usage": _USAGE,
    }
    resp = web.StreamResponse(headers={"content-type": "text/event-stream", "x-request-id": call})
    await resp.prepare(request)
    for part in head:  # apart: a client gone after one is seen before the next
        await resp.write(part)
        await asyncio.sleep(0.05)
    await asyncio.sleep(PAUSE)
    await resp.write(_event("response.completed", {"response": done}))
    await resp.write_eof()
    return resp


async def _messages(request: web.Request) -> web.StreamResponse:
    await request.read()
    call = request.headers["x-call"]
    message = {"id": "msg_" + call, "type": "message", "role": "assistant", "content": []}
    start_usage = {"input_tokens": PROMPT, "output_tokens": 1}
    head = [
        _event(
            "message_start",
            {"message": {**message, "model": "claude-sonnet-4-5", "usage": start_usage}},
        ),
        _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        _event(
            "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hello"}}
        ),
        _event("content_block_stop", {"index": 0}),
    ]
    delta = {
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": OUTPUT},
    }
    headers = {"content-type": "text/event-stream", "request-id": call}
    gzip = "gzip" in request.headers.get("accept-encoding", "")  # as Anthropic's API does
    if gzip:
        headers["content-encoding"] = "gzip"
    resp = web.StreamResponse(headers=headers)
    await resp.prepare(request)
    encoder = zlib.compressobj(wbits=31)  # each event flushed: the client reads it at once

    def encoded(part: bytes) -> bytes:
        return encoder.compress(part) + encoder.flush(zlib.Z_SYNC_FLUSH) if gzip else part

    for part in head:
        await resp.write(encoded(part))
    await asyncio.sleep(PAUSE)
    await resp.write(encoded(_event("message_delta", delta)))
    await resp.write(encoded(_event("message_stop", {})))
    if gzip:
        await resp.write(encoder.flush())
    await resp.write_eof()
    return resp


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    routes = {"/v1/chat/completions": _chat, "/v1/responses": _responses, "/v1/messages": _messages}
    with serve_posts(routes) as port:
        yield port


def _client(proxy: MeterProxy, port: int) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=KEYS["alice"],
        base_url=f"http://127.0.0.1:{port}/v1",
        max_retries=0,
        http_client=openai.DefaultHttpxClient(proxy=proxy.url),
    )


def _row(proxy: MeterProxy, call: str) -> dict[str, Any]:
    [row] = proxy.wait_for_events([call], timeout=15)
    return row


@pytest.mark.parametrize("client_asks_usage", [False, True], ids=["proxy-asks", "client-asks"])
def test_a_client_leaving_at_finish_reason_is_billed_the_providers_usage(
    tmp_path: Path, server: int, start_proxy: ProxyFactory, client_asks_usage: bool
) -> None:
    catalog = one_provider_catalog(
        tmp_path / "catalog.yaml", "openai", server, {"alice": [KEYS["alice"]]}
    )
    proxy = start_proxy(catalog=catalog)
    call = "leaves-at-finish-" + str(client_asks_usage).lower()
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if client_asks_usage else {}
    with _client(proxy, server) as client:
        stream = client.chat.completions.create(
            model="o3-mini",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_headers={"x-call": call},
            **extra,
        )
        text = ""
        for chunk in stream:
            text += chunk.choices[0].delta.content or ""
            if chunk.choices[0].finish_reason:
                break
        stream.close()
    assert text == "Hello"
    row = _row(proxy, call)
    assert (row["input_tokens"], row["output_tokens"], row["estimated"]) == (PROMPT, OUTPUT, False)
    assert row["reasoning_tokens"] == REASONING


def test_a_client_reading_to_the_end_gets_every_chunk_in_order(
    tmp_path: Path, server: int, start_proxy: ProxyFactory
) -> None:
    catalog = one_provider_catalog(
        tmp_path / "catalog.yaml", "openai", server, {"alice": [KEYS["alice"]]}
    )
    proxy = start_proxy(catalog=catalog)
    with _client(proxy, server) as client:
        chunks = list(
            client.chat.completions.create(
                model="o3-mini",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                extra_headers={"x-call": "reads-to-the-end"},
            )
        )
    assert [(c.choices[0].delta.content, c.choices[0].finish_reason) for c in chunks] == [
        ("Hel", None),
        ("lo", None),
        (None, "stop"),
    ]  # the proxy's usage chunk is not among them
    assert _row(proxy, "reads-to-the-end")["output_tokens"] == OUTPUT


def test_a_responses_client_leaving_at_output_text_done_is_billed_the_providers_usage(
    tmp_path: Path, server: int, start_proxy: ProxyFactory
) -> None:
    catalog = one_provider_catalog(
        tmp_path / "catalog.yaml", "openai", server, {"alice": [KEYS["alice"]]}
    )
    proxy = start_proxy(catalog=catalog)
    with _client(proxy, server) as client:
        stream = client.responses.create(
            model="o3", input="hi", stream=True, extra_headers={"x-call": "responses-leaves"}
        )
        for event in stream:
            if event.type == "response.output_text.done":
                assert event.text == "Hello"
                break
        stream.close()
    row = _row(proxy, "responses-leaves")
    assert (row["input_tokens"], row["output_tokens"], row["estimated"]) == (PROMPT, OUTPUT, False)
    assert row["reasoning_tokens"] == REASONING


def test_an_anthropic_client_leaving_at_content_block_stop_is_billed_the_output_usage(
    tmp_path: Path, server: int, start_proxy: ProxyFactory
) -> None:
    provider = {"name": "anthropic-fake", "flavor": "anthropic", "hosts": [f"127.0.0.1:{server}"]}
    catalog = write_catalog(tmp_path / "catalog.yaml", [provider], {"alice": [KEYS["alice"]]})
    proxy = start_proxy(catalog=catalog)
    with anthropic.Anthropic(
        api_key=KEYS["alice"],
        base_url=f"http://127.0.0.1:{server}",
        max_retries=0,
        http_client=anthropic.DefaultHttpxClient(proxy=proxy.url),
    ) as client:
        stream = client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=1000,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_headers={"x-call": "anthropic-leaves"},
        )
        for event in stream:
            if event.type == "content_block_stop":
                break
        stream.close()
    [row] = proxy.wait_for_events(["anthropic-leaves"], timeout=15)
    assert (row["input_tokens"], row["output_tokens"], row["estimated"]) == (PROMPT, OUTPUT, False)
