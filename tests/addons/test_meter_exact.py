"""The addon meters what the provider reported, and flags what it could not trust.

Driven in-process with mitmproxy's taddons/tflow, like tests/addons/test_meter.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http

from addons.meter import Meter
from tests.addons import test_meter
from tests.addons.test_meter import KEY, _flow, _respond, _rows

meter = test_meter.meter  # the same fixture: an addon in taddons with a catalog and a store

STREAM_REQUEST = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def _sse(obj: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    data = obj if isinstance(obj, str) else json.dumps(obj)
    return head + b"data: " + data.encode() + b"\n\n"


def _open_stream(m: Meter, f: http.HTTPFlow) -> None:
    m.requestheaders(f)
    m.request(f)
    f.response = http.Response.make(200, b"", {"content-type": "text/event-stream"})
    m.responseheaders(f)
    assert callable(f.response.stream)


def test_client_gone_after_final_usage_is_complete(
    meter: tuple[Meter, Any], tmp_path: Path
) -> None:
    """The SDK closes at [DONE]: mitmproxy reports an error, the call is still complete."""
    m, _ = meter
    f = _flow(authorization=f"Bearer {KEY}", body={**STREAM_REQUEST, "stream": True})
    _open_stream(m, f)
    chunk = {"id": "chatcmpl-unit9", "model": "gpt-4o-2024-08-06"}
    assert f.response is not None and callable(f.response.stream)
    f.response.stream(_sse({**chunk, "choices": [{"index": 0, "delta": {"content": "Hi"}}]}))
    usage = {"prompt_tokens": 12, "completion_tokens": 2}
    f.response.stream(_sse({**chunk, "choices": [], "usage": usage}))
    f.response.stream(_sse("[DONE]"))
    m.error(f)  # the client left before the chunked body's end
    m.done()
    [row] = _rows(tmp_path)
    assert (row["status"], row["estimated"]) == (200, False)
    assert (row["input_tokens"], row["output_tokens"]) == (12, 2)


def test_cut_openai_stream_keeps_the_id_and_model_seen(
    meter: tuple[Meter, Any], tmp_path: Path
) -> None:
    m, _ = meter
    f = _flow(authorization=f"Bearer {KEY}", body={**STREAM_REQUEST, "stream": True})
    _open_stream(m, f)
    chunk = {"id": "chatcmpl-unit7", "model": "gpt-4o-2024-08-06"}
    assert f.response is not None and callable(f.response.stream)
    f.response.stream(_sse({**chunk, "choices": [{"index": 0, "delta": {"content": "Hel"}}]}))
    m.error(f)
    m.done()
    [row] = _rows(tmp_path)
    assert (row["response_id"], row["model"]) == ("chatcmpl-unit7", "gpt-4o-2024-08-06")
    assert row["status"] is None and row["estimated"]


def test_anthropic_cut_after_message_start_is_flagged(
    meter: tuple[Meter, Any], tmp_path: Path
) -> None:
    m, _ = meter
    f = _flow(
        "http://127.0.0.1:9999/v1/messages",
        body={"model": "claude-x", "messages": [], "stream": True},
        **{"x-api-key": KEY},
    )
    _open_stream(m, f)
    message = {"id": "msg_unit000001", "model": "claude-x-20250101", "content": []}
    usage = {"input_tokens": 40, "output_tokens": 1}
    start = {"type": "message_start", "message": {**message, "usage": usage}}
    assert f.response is not None and callable(f.response.stream)
    f.response.stream(_sse(start, "message_start"))
    m.error(f)
    m.done()
    [row] = _rows(tmp_path)
    assert (row["input_tokens"], row["output_tokens"]) == (40, 1)
    assert row["estimated"] and row["status"] is None
    assert (row["response_id"], row["model"]) == ("msg_unit000001", "claude-x-20250101")


def _json_call(m: Meter, usage: dict[str, Any], response_id: str) -> None:
    body = {
        "id": response_id,
        "model": "gpt-4o",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "four words of text"}}
        ],
        "usage": usage,
    }
    f = _flow(authorization=f"Bearer {KEY}", body=STREAM_REQUEST)
    m.requestheaders(f)
    m.request(f)
    _respond(m, f, [json.dumps(body).encode()])


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 10, "completion_tokens": -70},
        {
            "prompt_tokens": 10,
            "completion_tokens": 1,
            "prompt_tokens_details": {"cached_tokens": -1000},
        },
        {"prompt_tokens": 2**63, "completion_tokens": 1},
        {"prompt_tokens": None, "completion_tokens": 1},
        {"prompt_tokens": "10", "completion_tokens": 1},
        {"prompt_tokens": 10.5, "completion_tokens": 1},
    ],
    ids=["negative", "negative-cached", "huge", "null", "string", "fraction"],
)
def test_unusable_usage_is_estimated_flagged_and_logged_once(
    meter: tuple[Meter, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture, usage: dict
) -> None:
    m, _ = meter
    with caplog.at_level(logging.WARNING, logger="meterline.proxy"):
        _json_call(m, usage, "chatcmpl-bad00001")
        _json_call(m, usage, "chatcmpl-bad00002")
        m.done()
    rows = _rows(tmp_path)
    assert len(rows) == 2, "an unusable count must not make the event vanish"
    for row in rows:
        assert row["estimated"] and row["status"] == 200
        assert row["input_tokens"] > 0 and row["output_tokens"] > 0
        assert all(row[c] >= 0 for c in ("input_tokens", "cached_input_tokens", "output_tokens"))
    warnings = [r for r in caplog.records if "unusable usage" in r.getMessage()]
    assert len(warnings) == 1
