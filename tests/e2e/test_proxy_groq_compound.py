"""Groq compound calls through a real ``mitmdump``: each is stored as the call's event
(``groq/compound``, no tokens) and one event per underlying model, and a limit on all of
Groq's models (or on every model) still counts all of a compound call's tokens.

The upstream serves bodies written in Groq's documented shape
(:mod:`tests.support.groqcompound`), JSON and SSE, as a recorded response is served.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.conftest import KEYS, new_proxy
from tests.e2e.test_governance import rows_where
from tests.support.clients import ca_context
from tests.support.governance import with_plan
from tests.support.groqcompound import (
    COMPLETION,
    LLAMA,
    OSS,
    PROMPT,
    SCOUT,
    SUB_CALLS,
    compound_json,
    compound_stream,
    top_usage,
)
from tests.support.proxy import write_catalog
from tests.support.recordings import Recording
from tests.support.replay import ReplayUpstream

PATH = "/openai/v1/chat/completions"
#: Each call's tokens: a limit of 10,000 admits two calls (10,168 used), not a third.
PER_CALL = PROMPT + COMPLETION


def compound_recordings(directory: Path) -> list[Recording]:
    """A JSON and a streamed compound call, served like the corpus's recordings."""
    found = []
    for name, body, content_type in (
        ("compound-json", compound_json(top_usage(), SUB_CALLS), "application/json"),
        ("compound-sse", compound_stream(top_usage(), SUB_CALLS), "text/event-stream"),
    ):
        (directory / name).write_bytes(body)
        response = {"status": 200, "content_type": content_type, "transfer": "chunked",
                    "body_file": name}  # fmt: skip
        meta = {"flavor": "openai", "response": response}
        found.append(Recording("groq", name, meta, directory))
    return found


def send(client: httpx2.Client, upstream: ReplayUpstream, name: str) -> tuple[int, str | None]:
    stream = name.endswith("sse")
    body: dict[str, Any] = {"model": "groq/compound", "messages": [{"role": "user",
                            "content": "Weather in Tokyo?"}], "stream": stream}  # fmt: skip
    headers = {"authorization": f"Bearer {KEYS['alice']}", "x-replay": f"groq/{name}"}
    url = upstream.base_url("groq", tls=True) + PATH
    with client.stream("POST", url, content=json.dumps(body).encode(), headers=headers) as r:
        r.read()
        return r.status_code, r.headers.get("x-request-id")


@pytest.mark.parametrize(
    "meter",
    [{"provider": "groq", "model": "*"}, {"model": "*"}],
    ids=["groq-models", "every-model"],
)
def test_compound_calls_are_split_by_model_and_count_against_limits(
    tmp_path: Path, mitm_confdir: Path, meter: dict[str, str]
) -> None:
    with ReplayUpstream(compound_recordings(tmp_path), tmp_path) as upstream:
        catalog = write_catalog(
            tmp_path / "catalog.yaml",
            upstream.catalog_providers(),
            consumers={"alice": [KEYS["alice"]]},
        )
        features = [{"key": "groq-tokens", "name": "Groq tokens", "meter": meter}]
        with_plan(catalog, features, [{"feature": "groq-tokens", "limit": 10_000}])
        proxy = new_proxy(tmp_path / "proxy", mitm_confdir, catalog).start()
        try:
            with httpx2.Client(proxy=proxy.url, verify=ca_context(proxy), timeout=30) as client:
                json_call = send(client, upstream, "compound-json")
                sse_call = send(client, upstream, "compound-sse")
                refused, _ = send(client, upstream, "compound-json")
            assert (json_call[0], sse_call[0], refused) == (200, 200, 429)
            for _, request_id in (json_call, sse_call):
                rows = sorted(
                    rows_where(proxy, f"request_id = '{request_id}'", 4),
                    key=lambda r: r["event_id"],
                )
                main, beside = rows[0], rows[1:]
                assert [r["event_id"] for r in beside] == [
                    f"{main['event_id']}#{i}" for i in range(3)
                ]
                assert [r["model"] for r in rows] == ["groq/compound", SCOUT, OSS, LLAMA]
                tokens = [(r["input_tokens"], r["cached_input_tokens"], r["output_tokens"],
                           r["reasoning_tokens"]) for r in rows]  # fmt: skip
                assert tokens == [(0, 0, 0, 0), (620, 1500, 64, 0), (900, 0, 300, 80),
                                  (1500, 0, 200, 0)]  # fmt: skip
                assert sum(sum(t[:3]) for t in tokens) == PER_CALL
                assert {(r["status"], r["estimated"], r["response_id"]) for r in rows} == {
                    (200, False, "stub")
                }
            [row] = rows_where(proxy, "reason IS NOT NULL", 1)
            assert (row["model"], row["reason"]) == ("groq/compound", "limit:groq-tokens")
        finally:
            proxy.stop()
