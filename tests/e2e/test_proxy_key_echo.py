"""An injected provider key echoed back by the provider never reaches the client.

carol presents a gateway key; the proxy sends the organisation's provider key instead.
Providers quote the key they received in an authentication error (OpenAI's "Incorrect
API key provided: sk-...", Anthropic's, Gemini's "API key not valid"): before, the
proxy forwarded such a body, and a header echoing it, untouched, so the consumer got
the very key injection keeps from it, and the meter's warning about an SSE error event
printed it in the log. Now the key is masked, in a buffered JSON body (its
``Content-Length`` still right), a streamed one (SSE, the key cut across two writes),
a gzip one, and a header; the bodies stay valid JSON.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from aiohttp import web

from addons.metering.keyecho import masked
from tests.conftest import KEYS, PROVIDER_KEYS, ProxyFactory
from tests.support.aioserver import serve
from tests.support.proxy import MeterProxy, write_catalog

GATEWAY_KEY = KEYS["carol"]
ENV = {
    "openai": "METERLINE_TEST_OPENAI_KEY",
    "anthropic": "METERLINE_TEST_ANTHROPIC_KEY",
    "gemini": "METERLINE_TEST_GEMINI_KEY",
}
MODES = ("json", "json-to-stream", "sse", "gzip")
"""``json``: a 401 of known length (buffered by the proxy); ``json-to-stream``: the same
answering a call that asked for a stream (streamed through the proxy); ``sse``: a 200
event stream whose error event quotes the key, cut across two writes; ``gzip``: a 401
encoded though the proxy asked for plain bytes."""


def _received_key(request: web.Request) -> str:
    if "authorization" in request.headers:
        return request.headers["authorization"].removeprefix("Bearer ")
    return (
        request.headers.get("x-api-key")
        or request.headers.get("x-goog-api-key")
        or request.query.get("key", "")
    )


def _error(flavor: str, key: str) -> dict[str, Any]:
    if flavor == "openai":
        message = f"Incorrect API key provided: {key}. You can find your API key at ..."
        return {"error": {"message": message, "type": "invalid_request_error"}}
    if flavor == "anthropic":
        message = f"invalid x-api-key: {key}"
        return {"type": "error", "error": {"type": "authentication_error", "message": message}}
    message = f"API key not valid: {key}. Please pass a valid API key."
    return {"error": {"code": 401, "message": message, "status": "UNAUTHENTICATED"}}


def _provider(flavor: str) -> Any:
    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        key = _received_key(request)
        mode = request.headers["x-echo"]
        headers = {"x-request-id": request.headers["x-test-id"], "x-echoed-key": key}
        body = json.dumps(_error(flavor, key)).encode()
        if mode in ("json", "json-to-stream"):
            return web.Response(
                status=401, body=body, headers=headers, content_type="application/json"
            )
        if mode == "gzip":
            headers["content-encoding"] = "gzip"
            return web.Response(
                status=401, body=gzip.compress(body), headers=headers,
                content_type="application/json",
            )  # fmt: skip
        resp = web.StreamResponse(headers={**headers, "content-type": "text/event-stream"})
        await resp.prepare(request)
        event = b"event: error\ndata: " + body + b"\n\n"
        cut = event.index(key.encode()) + len(key) // 2
        await resp.write(event[:cut])  # the key in two pieces
        await resp.write(event[cut:])
        await resp.write_eof()
        return resp

    return answer


@pytest.fixture(scope="module")
def ports() -> Iterator[dict[str, int]]:
    with (
        serve(
            {
                ("POST", "/v1/chat/completions"): _provider("openai"),
                ("POST", "/v1/realtime/client_secrets"): _provider("openai"),  # a key mint
                ("GET", "/v1/realtime"): _provider("openai"),  # a session's upgrade
            }
        ) as oa,
        serve({("POST", "/v1/messages"): _provider("anthropic")}) as an,
        serve(
            {
                ("POST", "/v1beta/models/{call}"): _provider("gemini"),
                ("POST", "/v1alpha/auth_tokens"): _provider("gemini"),  # a key mint
            }
        ) as ge,
    ):
        yield {"openai": oa, "anthropic": an, "gemini": ge}


@pytest.fixture
def proxy(start_proxy: ProxyFactory, ports: dict[str, int], tmp_path: Path) -> MeterProxy:
    catalog = write_catalog(
        tmp_path / "catalog.yaml",
        [
            {"name": f"echo-{flavor}", "flavor": flavor, "hosts": [f"127.0.0.1:{port}"]}
            for flavor, port in ports.items()
        ],
        {"carol": [GATEWAY_KEY]},
        inject={"carol": {f"echo-{flavor}": var for flavor, var in ENV.items()}},
    )
    return start_proxy(catalog=catalog)


def _call(client: httpx2.Client, flavor: str, port: int, mode: str) -> httpx2.Response:
    stream = mode in ("json-to-stream", "sse")
    headers = {"x-echo": mode, "x-test-id": f"{flavor}-{mode}"}
    base = f"http://127.0.0.1:{port}"
    if flavor == "openai":
        body: dict[str, Any] = {"model": "gpt-4o", "stream": stream, "messages": []}
        headers["authorization"] = f"Bearer {GATEWAY_KEY}"
        return client.post(f"{base}/v1/chat/completions", json=body, headers=headers)
    if flavor == "anthropic":
        body = {"model": "claude-sonnet-4-6", "max_tokens": 10, "stream": stream, "messages": []}
        headers |= {"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01"}
        return client.post(f"{base}/v1/messages", json=body, headers=headers)
    call = "streamGenerateContent?alt=sse&" if stream else "generateContent?"
    url = f"{base}/v1beta/models/gemini-2.5-flash:{call}key={GATEWAY_KEY}"
    return client.post(url, json={"contents": []}, headers=headers)


def _error_json(resp: httpx2.Response) -> Any:
    """The error object the client got: the body, or the SSE event's data."""
    if "event-stream" not in resp.headers.get("content-type", ""):
        return resp.json()
    [data] = [line for line in resp.text.splitlines() if line.startswith("data:")]
    return json.loads(data.removeprefix("data:"))


@pytest.mark.parametrize("flavor", ["openai", "anthropic", "gemini"])
def test_an_echoed_injected_key_is_masked(
    proxy: MeterProxy, ports: dict[str, int], flavor: str
) -> None:
    secret = PROVIDER_KEYS[ENV[flavor]]
    shown = masked(secret.encode()).decode()
    with httpx2.Client(proxy=proxy.url, timeout=30) as client:
        for mode in MODES:
            resp = _call(client, flavor, ports[flavor], mode)
            assert resp.status_code == (200 if mode == "sse" else 401), mode
            assert secret not in resp.text, mode
            assert secret not in str(resp.headers.raw), mode
            assert resp.headers["x-echoed-key"] == shown, mode
            error = _error_json(resp)  # still valid JSON
            assert shown in json.dumps(error), mode
            if "content-length" in resp.headers:  # the framing is right
                assert int(resp.headers["content-length"]) == resp.num_bytes_downloaded, mode
    proxy.wait_for_events([f"{flavor}-{mode}" for mode in MODES])
    assert secret not in proxy.log_text()


def test_a_key_the_client_sent_itself_is_not_touched(
    proxy: MeterProxy, ports: dict[str, int]
) -> None:
    """Only an injected key is masked: a consumer's own key is its own to see."""
    own = KEYS["alice"]
    with httpx2.Client(proxy=proxy.url, timeout=30) as client:
        resp = client.post(
            f"http://127.0.0.1:{ports['openai']}/v1/chat/completions",
            json={"model": "gpt-4o", "messages": []},
            headers={"authorization": f"Bearer {own}", "x-echo": "json", "x-test-id": "own"},
        )
    assert own in resp.json()["error"]["message"]
    assert resp.headers["x-echoed-key"] == own


SIDE_FLOWS = [
    ("openai", "POST", "/v1/realtime/client_secrets"),
    ("openai", "GET", "/v1/realtime?model=gpt-realtime"),
    ("gemini", "POST", "/v1alpha/auth_tokens"),
]


@pytest.mark.parametrize(("flavor", "method", "path"), SIDE_FLOWS)
@pytest.mark.parametrize("mode", ["json", "gzip"])
def test_an_injected_key_echoed_by_a_mint_or_a_refused_upgrade_is_masked(
    proxy: MeterProxy, ports: dict[str, int], flavor: str, method: str, path: str, mode: str
) -> None:
    """A key mint and a metered WebSocket's upgrade get the consumer's provider key
    injected too. Before, their answers were not scrubbed: an authentication error
    quoting the key handed it to the consumer (the body and a header)."""
    secret = PROVIDER_KEYS[ENV[flavor]]
    shown = masked(secret.encode()).decode()
    headers = {"x-echo": mode, "x-test-id": f"{flavor}-{method}-{mode}"}
    url = f"http://127.0.0.1:{ports[flavor]}{path}"
    if flavor == "openai":
        headers["authorization"] = f"Bearer {GATEWAY_KEY}"
    else:
        url += f"?key={GATEWAY_KEY}"
    if method == "GET":
        headers |= {
            "connection": "Upgrade",
            "upgrade": "websocket",
            "sec-websocket-version": "13",
            "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
        }
    with httpx2.Client(proxy=proxy.url, timeout=30) as client:
        resp = client.request(method, url, headers=headers, json=None if method == "GET" else {})
    assert resp.status_code == 401
    assert resp.headers["x-echoed-key"] == shown  # the provider got the injected key
    assert secret not in resp.text
    assert secret not in str(resp.headers.raw)
    assert shown in json.dumps(resp.json())
    assert secret not in proxy.log_text()
