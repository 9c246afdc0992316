"""Separate calls that a server answers with one id are separate events.

Ollama's OpenAI-compatible API draws ``chatcmpl-<n>`` from 999 values and sends no
request-id header; vLLM builds its id from the client's ``X-Request-Id`` (and echoes
that header). Event ids made from those merged such calls into one event and dropped
the rest: 4 calls, 28 output tokens, stored as 1 event of 5.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from aiohttp import web

from tests.conftest import KEYS, ProxyFactory
from tests.support.aioserver import serve_posts
from tests.support.proxy import MeterProxy, one_provider_catalog

OUTPUTS = (5, 7, 11, 13)


def _usage(output: int) -> dict[str, int]:
    return {"prompt_tokens": 20, "completion_tokens": output, "total_tokens": 20 + output}


async def _chat(request: web.Request) -> web.StreamResponse:
    """Ollama's ids (``x-echo`` absent) or vLLM's (the client's ``X-Request-Id``, echoed)."""
    body = await request.json()
    output = int(body["max_tokens"])
    trace = request.headers.get("x-request-id")
    rid = f"chatcmpl-{trace}" if trace else "chatcmpl-42"
    headers = {"x-request-id": trace} if trace else {}
    base = {"id": rid, "object": "chat.completion", "created": 1, "model": body["model"]}
    if not body.get("stream"):
        message = {"role": "assistant", "content": "ok"}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        answer = {**base, "choices": [choice], "usage": _usage(output)}
        return web.json_response(answer, headers=headers)
    resp = web.StreamResponse(headers={"content-type": "text/event-stream", **headers})
    await resp.prepare(request)
    chunk = {**base, "object": "chat.completion.chunk"}
    delta = {"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}
    await resp.write(f"data: {json.dumps({**chunk, 'choices': [delta]})}\n\n".encode())
    last = {**chunk, "choices": [], "usage": _usage(output)}
    await resp.write(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())
    await resp.write_eof()
    return resp


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    with serve_posts({"/v1/chat/completions": _chat}) as port:
        yield port


def _wait_for(proxy: MeterProxy, count: int, timeout: float = 10.0) -> list[dict[str, object]]:
    """The stored events once ``count`` arrived (or all there are after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = proxy.events()
        if len(rows) >= count:
            return rows
        time.sleep(0.05)
    return proxy.events()


@pytest.mark.parametrize("trace", [None, "task-7f3a-session"], ids=["ollama", "vllm"])
def test_calls_that_share_a_response_id_are_each_billed(
    start_proxy: ProxyFactory, server: int, tmp_path: Path, trace: str | None
) -> None:
    catalog = one_provider_catalog(
        tmp_path / "catalog.yaml", "self-hosted", server, {"alice": [KEYS["alice"]]}
    )
    proxy = start_proxy(catalog=catalog)
    headers = {"x-request-id": trace} if trace else {}
    with openai.OpenAI(
        base_url=f"http://127.0.0.1:{server}/v1",
        api_key=KEYS["alice"],
        max_retries=0,
        default_headers=headers,
        http_client=openai.DefaultHttpxClient(proxy=proxy.url),
    ) as client:
        ids = set()
        for n, output in enumerate(OUTPUTS):
            messages: list[openai.types.chat.ChatCompletionMessageParam] = [
                {"role": "user", "content": "hi"}
            ]
            if n % 2:  # streamed, as an agent's UI would
                stream = client.chat.completions.create(
                    model="llama3.2", messages=messages, max_tokens=output, stream=True
                )
                ids |= {chunk.id for chunk in stream}
            else:
                reply = client.chat.completions.create(
                    model="llama3.2", messages=messages, max_tokens=output
                )
                ids.add(reply.id)
    assert len(ids) == 1  # the server gave every call one id
    rows = _wait_for(proxy, len(OUTPUTS))
    assert len(rows) == len(OUTPUTS)
    assert sorted(r["output_tokens"] for r in rows) == sorted(OUTPUTS)  # type: ignore[type-var]
    assert len({r["event_id"] for r in rows}) == len(OUTPUTS)
    assert {r["response_id"] for r in rows} == ids
    assert not any(r["estimated"] for r in rows)
