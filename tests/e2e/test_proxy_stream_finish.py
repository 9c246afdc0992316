"""An openai SDK client that stops reading at ``finish_reason`` still gets its call
billed on the provider's usage.

OpenAI sends the usage chunk after the chunk with ``finish_reason``; a client that leaves
at the finish (``for chunk in stream: ... break``) closed before it, so the proxy stored
an estimate from the visible text: 1 output token for a reasoning model's 450. The
provider below waits between the finish and the usage chunk, as a busy one may; the
proxy now holds the closing chunks until ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from tests.conftest import KEYS, ProxyFactory
from tests.support.aioserver import serve_posts
from tests.support.proxy import MeterProxy, one_provider_catalog

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


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    with serve_posts({"/v1/chat/completions": _chat}) as port:
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
