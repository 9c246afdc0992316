"""Ollama's native API through the real proxy: ``/api/chat`` (an NDJSON stream by
default, one JSON object with ``"stream": false``), ``/api/generate`` and ``/api/embed``,
metered from the ``prompt_eval_count`` and ``eval_count`` of the last object, as
docs/token-model.md gives them (before, those paths passed unmetered)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from aiohttp import web

from tests.conftest import KEYS, ProxyFactory
from tests.support.aioserver import serve_posts
from tests.support.clients import post_via
from tests.support.proxy import one_provider_catalog

PROMPT, OUTPUT = 26, 3


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    rid = request.headers["x-test-id"]
    last = {"model": body["model"], "done": True, "done_reason": "stop",
            "prompt_eval_count": PROMPT, "eval_count": OUTPUT}  # fmt: skip
    if request.path == "/api/embed":
        embedded = {"model": body["model"], "embeddings": [[0.1]], "prompt_eval_count": PROMPT}
        return web.json_response(embedded, headers={"x-request-id": rid})
    key = "message" if request.path == "/api/chat" else "response"
    words = ["Hel", "lo", "!"]
    if body.get("stream") is False:
        text = "".join(words)
        whole = {**last, key: {"role": "assistant", "content": text} if key == "message" else text}
        return web.json_response(whole, headers={"x-request-id": rid})
    resp = web.StreamResponse(headers={"content-type": "application/x-ndjson", "x-request-id": rid})
    await resp.prepare(request)
    for w in words:
        part = {"role": "assistant", "content": w} if key == "message" else w
        await resp.write(
            json.dumps({"model": body["model"], key: part, "done": False}).encode() + b"\n"
        )
    await resp.write(
        json.dumps(
            {**last, key: "" if key == "response" else {"role": "assistant", "content": ""}}
        ).encode()
        + b"\n"
    )
    await resp.write_eof()
    return resp


@pytest.fixture(scope="module")
def ollama() -> Iterator[int]:
    with serve_posts({"/api/{name}": _chat}) as port:
        yield port


@pytest.mark.parametrize(
    "path,body,output,streamed",
    [  # chat and generate stream unless told not to (before: streamed false without "stream")
        ("/api/chat", {"messages": [{"role": "user", "content": "hi"}]}, OUTPUT, True),
        (
            "/api/chat",
            {"messages": [{"role": "user", "content": "hi"}], "stream": False},
            OUTPUT,
            False,
        ),
        ("/api/generate", {"prompt": "hi"}, OUTPUT, True),
        ("/api/generate", {"prompt": "hi", "stream": True}, OUTPUT, True),
        ("/api/embed", {"input": "hi"}, 0, False),
    ],
)
def test_ollama_native_calls_are_metered(
    start_proxy: ProxyFactory,
    ollama: int,
    tmp_path: Path,
    path: str,
    body: dict[str, Any],
    output: int,
    streamed: bool,
) -> None:
    catalog = one_provider_catalog(
        tmp_path / "catalog.yaml", "ollama-local", ollama, {"alice": [KEYS["alice"]]}
    )
    proxy = start_proxy(catalog=catalog)
    url = f"http://127.0.0.1:{ollama}{path}"
    r = post_via(proxy, url, {"model": "llama3.2", **body}, KEYS["alice"], {"x-test-id": url})
    assert r.status_code == 200
    [row] = proxy.wait_for_events([url])
    assert (row["consumer"], row["provider"], row["model"]) == ("alice", "ollama-local", "llama3.2")
    assert (row["input_tokens"], row["output_tokens"], row["estimated"]) == (PROMPT, output, False)
    assert row["streamed"] is streamed


def test_ollama_stream_false_spelled_with_an_escape_is_no_stream(
    start_proxy: ProxyFactory, ollama: int, tmp_path: Path
) -> None:
    """Ollama parses ``"\\u0073tream": false`` as ``"stream": false`` and answers with one
    JSON object: the proxy read the bytes, saw no ``"stream": false`` and metered a stream."""
    catalog = one_provider_catalog(
        tmp_path / "catalog.yaml", "ollama-local", ollama, {"alice": [KEYS["alice"]]}
    )
    proxy = start_proxy(catalog=catalog)
    url = f"http://127.0.0.1:{ollama}/api/chat"
    body = b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"\\u0073tream":false}'
    with httpx2.Client(proxy=proxy.url, timeout=30) as client:
        r = client.post(
            url,
            content=body,
            headers={"authorization": f"Bearer {KEYS['alice']}", "x-test-id": url},
        )
    assert r.status_code == 200 and r.json()["done"] is True  # one object: no stream
    [row] = proxy.wait_for_events([url])
    assert (row["input_tokens"], row["output_tokens"], row["estimated"]) == (PROMPT, OUTPUT, False)
    assert row["streamed"] is False
