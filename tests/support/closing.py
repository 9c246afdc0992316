"""A short-lived official openai SDK client that stops at ``data: [DONE]`` and closes.

The SDK's ``Stream`` breaks out of its loop at ``[DONE]`` and closes the response
without reading the rest of the chunked body; a client process that exits right after
does the same. If the provider has not ended the body by then, mitmproxy sees the
client go away mid-response. The proxy must still meter the call as complete: the
provider's final usage had arrived before ``[DONE]``.

Used by ``tests/e2e/test_sdk_closes_at_done.py`` (a few runs) and
``bench/closing_clients.py`` (many runs, the figure in the README).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import openai

from tests.support.clients import ca_context
from tests.support.proxy import MeterProxy
from tests.support.replay import ReplayUpstream

#: A real OpenAI chat stream (``choices: []`` usage chunk, then ``[DONE]``).
RECORDING = "openai/chat-sse-gpt-4o-mini-answer"


@dataclass(frozen=True)
class Run:
    request_id: str
    include_usage: bool
    chunks: int


def stream_and_close(
    proxy: MeterProxy,
    upstream: ReplayUpstream,
    api_key: str,
    *,
    linger: float,
    include_usage: bool,
) -> Run:
    """One fresh client: stream a chat completion, stop at ``[DONE]``, close at once."""
    client = openai.OpenAI(
        base_url=upstream.base_url("openai", tls=True) + "/v1",
        api_key=api_key,
        max_retries=0,
        http_client=openai.DefaultHttpxClient(proxy=proxy.url, verify=ca_context(proxy)),
        default_headers={"x-replay": RECORDING, "x-replay-linger": str(linger)},
    )
    try:
        extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "What is the capital of the UK?"}],
            stream=True,
            **extra,
        )
        chunks = sum(1 for _ in stream)  # ends at [DONE]; the SDK closes the response
        return Run(stream.response.headers["x-request-id"], include_usage, chunks)
    finally:
        client.close()


def wait_for_rows(
    proxy: MeterProxy, request_ids: list[str], timeout: float = 30.0
) -> dict[str, list[dict[str, Any]]]:
    """Rows per request id, once every request id has one (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    by_id: dict[str, list[dict[str, Any]]] = {}
    while time.monotonic() < deadline:
        rows = proxy.events("list_contains(?, request_id)", [request_ids])
        by_id = {}
        for row in rows:
            by_id.setdefault(row["request_id"], []).append(row)
        if len(by_id) >= len(request_ids):
            break
        time.sleep(0.1)
    return by_id
