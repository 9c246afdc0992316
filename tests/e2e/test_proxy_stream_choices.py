"""A streamed chat completion with ``n=2`` from a server that repeats its cumulative
usage on every chunk (vLLM), cut before ``[DONE]``: final only once every choice has
its ``finish_reason``. Before, choice 0's finish made the usage on it final while
choice 1 was still streaming: a cut call stored as complete (``estimated = false``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from aiohttp import web

from tests.conftest import KEYS, ProxyFactory
from tests.support.aioserver import serve_posts
from tests.support.proxy import one_provider_catalog

PROMPT = 20


def _chunk(index: int, content: str | None, output: int, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    chunk = {
        "id": "chatcmpl-n2",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "served-model",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": PROMPT,
            "completion_tokens": output,
            "total_tokens": PROMPT + output,
        },
    }
    return f"data: {json.dumps(chunk)}\n\n".encode()


#: Choice 0 answers in one token and finishes; choice 1 goes on for three.
STREAM = [
    _chunk(0, "Hi", 1),
    _chunk(1, "Hel", 2),
    _chunk(0, None, 2, "stop"),
    _chunk(1, "lo", 3),
    _chunk(1, " you", 4),
    _chunk(1, None, 4, "stop"),
]


async def _chat(request: web.Request) -> web.StreamResponse:
    """The first ``x-parts`` chunks of :data:`STREAM`, then the connection is cut."""
    await request.read()
    parts = STREAM[: int(request.headers["x-parts"])]
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    for part in parts:
        await resp.write(part)
    assert request.transport is not None
    request.transport.abort()
    return resp


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    with serve_posts({"/v1/chat/completions": _chat}) as port:
        yield port


@pytest.mark.parametrize(
    ("parts", "estimated"),
    [
        pytest.param(4, True, id="cut-while-choice-1-streams"),
        pytest.param(6, False, id="cut-after-every-choice-finished"),
    ],
)
def test_a_cut_n2_stream_is_final_only_once_every_choice_finished(
    tmp_path: Path, server: int, start_proxy: ProxyFactory, parts: int, estimated: bool
) -> None:
    catalog = one_provider_catalog(
        tmp_path / "catalog.yaml", "openai", server, {"alice": [KEYS["alice"]]}
    )
    proxy = start_proxy(catalog=catalog)
    body = {
        "model": "served-model",
        "n": 2,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    with (
        httpx2.Client(proxy=proxy.url, timeout=30) as client,
        client.stream(
            "POST",
            f"http://127.0.0.1:{server}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {KEYS['alice']}", "x-parts": str(parts)},
        ) as r,
    ):
        assert r.status_code == 200
        with pytest.raises(httpx2.HTTPError):
            r.read()  # the connection is cut: no end of the chunked body
    row = proxy.only_event()
    assert row["estimated"] is estimated
    assert row["input_tokens"] == PROMPT
