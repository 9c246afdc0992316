"""Providers that refuse ``stream_options``: a streamed chat call that works without the
proxy works through it.

The proxy adds ``stream_options.include_usage`` to streamed chat requests (docs/proxy.md).
Mistral's API refuses members it does not know (422 ``extra_forbidden`` on
``stream_options``; it reports usage on the last chunk unasked), and Azure OpenAI refuses
the member on API versions before 2024-09-01 (400 "Unrecognized request argument").
Before, every streamed call through the proxy to them failed. The fake providers below
answer as those APIs do; the clients are the official openai SDK's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from tests.conftest import KEYS, ProxyFactory
from tests.support.aioserver import serve_posts
from tests.support.proxy import MeterProxy, write_catalog

PROMPT, OUTPUT = 7, 3


def _stream(model: str, usage_on_last: bool) -> bytes:
    usage = {"prompt_tokens": PROMPT, "completion_tokens": OUTPUT, "total_tokens": PROMPT + OUTPUT}
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]},
        {
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            **({"usage": usage} if usage_on_last else {}),
        },
    ]
    base = {"id": "cmpl-strict", "object": "chat.completion.chunk", "created": 1, "model": model}
    out = b"".join(f"data: {json.dumps({**base, **c})}\n\n".encode() for c in chunks)
    return out + b"data: [DONE]\n\n"


def _refusal(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=status)


async def _mistral(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if "stream_options" in body:  # Mistral: pydantic with extra="forbid"
        detail = {"type": "extra_forbidden", "loc": ["body", "stream_options", "include_usage"]}
        return _refusal(422, {"object": "error", "message": {"detail": [detail]}})
    return web.Response(
        body=_stream("mistral-small-latest", True), content_type="text/event-stream"
    )


async def _azure(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    version = request.query["api-version"]
    if "stream_options" in body and version < "2024-09-01":
        message = "Unrecognized request argument supplied: stream_options"
        return _refusal(400, {"error": {"message": message, "type": "invalid_request_error"}})
    with_usage = (body.get("stream_options") or {}).get("include_usage") is True
    stream = _stream("gpt-4o-2024-08-06", False)
    if with_usage:
        usage = {
            "prompt_tokens": PROMPT,
            "completion_tokens": OUTPUT,
            "total_tokens": PROMPT + OUTPUT,
        }
        chunk = {
            "id": "cmpl-strict",
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": usage,
        }
        stream = stream.replace(
            b"data: [DONE]", f"data: {json.dumps(chunk)}\n\ndata: [DONE]".encode()
        )
    return web.Response(body=stream, content_type="text/event-stream")


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[int, int]]:
    with (
        serve_posts({"/v1/chat/completions": _mistral}) as mistral,
        serve_posts({"/openai/deployments/{name}/chat/completions": _azure}) as azure,
    ):
        yield mistral, azure


def _proxy(
    tmp_path: Path, start_proxy: ProxyFactory, providers: list[dict[str, Any]]
) -> MeterProxy:
    catalog = write_catalog(tmp_path / "catalog.yaml", providers, {"alice": [KEYS["alice"]]})
    return start_proxy(catalog=catalog)


def _text(stream: Any) -> str:
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


@pytest.mark.parametrize(
    "provider",
    [
        pytest.param({"name": "mistral"}, id="mistral-by-name"),
        pytest.param({"name": "strict-server", "include_usage": False}, id="catalog-setting"),
    ],
)
def test_a_provider_that_refuses_stream_options_gets_none(
    tmp_path: Path, servers: tuple[int, int], start_proxy: ProxyFactory, provider: dict[str, Any]
) -> None:
    port = servers[0]
    proxy = _proxy(
        tmp_path, start_proxy, [{**provider, "flavor": "openai", "hosts": [f"127.0.0.1:{port}"]}]
    )
    with openai.OpenAI(
        api_key=KEYS["alice"],
        base_url=f"http://127.0.0.1:{port}/v1",
        max_retries=0,
        http_client=openai.DefaultHttpxClient(proxy=proxy.url),
    ) as client:
        stream = client.chat.completions.create(
            model="mistral-small-latest", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert _text(stream) == "Hi"
    row = proxy.only_event()
    assert (row["status"], row["input_tokens"], row["output_tokens"]) == (200, PROMPT, OUTPUT)
    assert row["estimated"] is False


@pytest.mark.parametrize(
    ("api_version", "metered_exactly"), [("2024-06-01", False), ("2024-10-21", True)]
)
def test_azure_gets_stream_options_only_on_api_versions_that_take_them(
    tmp_path: Path,
    servers: tuple[int, int],
    start_proxy: ProxyFactory,
    api_version: str,
    metered_exactly: bool,
) -> None:
    port = servers[1]
    azure = {
        "name": "azure-openai",
        "flavor": "openai",
        "hosts": [f"127.0.0.1:{port}"],
        "auth": "api-key",
    }
    proxy = _proxy(tmp_path, start_proxy, [azure])
    with openai.AzureOpenAI(
        api_key=KEYS["alice"],
        azure_endpoint=f"http://127.0.0.1:{port}",
        api_version=api_version,
        max_retries=0,
        http_client=openai.DefaultHttpxClient(proxy=proxy.url),
    ) as client:
        stream = client.chat.completions.create(
            model="my-gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert _text(stream) == "Hi"
    row = proxy.only_event()
    assert row["status"] == 200
    assert row["estimated"] is not metered_exactly  # an old version's stream has no usage
    if metered_exactly:
        assert (row["input_tokens"], row["output_tokens"]) == (PROMPT, OUTPUT)
