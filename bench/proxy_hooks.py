"""CPU cost of the addon per flow, in-process (no sockets): what metering adds to mitmproxy.

    .venv/bin/python bench/proxy_hooks.py [FLOWS]

A JSON body of known length is buffered by mitmproxy, not streamed, and is metered from
the response hook; SSE is streamed through the stream callable.

Splits the cost into the forwarding path (the hooks mitmproxy waits for, and the
stream callable) and the deferred part (parsing, event, spool write) that runs on the
event loop after the bytes were handed on. The background writer is kept out of it.
With ``meter_durable`` (the default) the event of a JSON body is spooled before the
reply, so its metering is on the forwarding path; each case is also measured with
``meter_durable=false`` to show what that guarantee moves there.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mitmproxy import http

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from addons.meter import Meter  # noqa: E402
from tests.support.proxy import write_catalog  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy.test import taddons, tflow

REQUEST = json.dumps(
    {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi " * 50}]}
).encode()
JSON_BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Fake answer."}}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 7},
    }
).encode()
_CHUNK = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "gpt-4o"}
SSE_CHUNKS = [
    b"data: "
    + json.dumps({**_CHUNK, "choices": [{"index": 0, "delta": {"content": w}}]}).encode()
    + b"\n\n"
    for w in ["Fake", " answer", " number", " one", " to", " you."]
] + [
    b"data: "
    + json.dumps(
        {**_CHUNK, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 6}}
    ).encode()
    + b"\n\n",
    b"data: [DONE]\n\n",
]


def measure(
    flows: int, chunks: list[bytes], content_type: str, buffered: bool, durable: bool = True
) -> tuple[float, float]:
    """(forwarding-path µs, deferred µs) per metered flow."""
    work = Path(tempfile.mkdtemp())
    catalog = write_catalog(work / "catalog.yaml", [], {"alice": ["sk-bench"]})
    meter = Meter()
    with taddons.context(meter) as tctx:
        tctx.configure(
            meter,
            meter_catalog=str(catalog),
            meter_db=str(work / "events.duckdb"),
            meter_spool=str(work / "spool"),
            meter_flush_interval="3600",
            meter_durable=durable,
        )
        queue: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        meter.deferred.defer = lambda fn, *a: queue.append((fn, a))  # type: ignore[method-assign]
        meter._open_spool()
        assert meter.writer is not None
        meter.writer.batch_events = 10**9
        headers = http.Headers(content_type="application/json", authorization="Bearer sk-bench")
        pairs = []
        for _ in range(flows):
            f = tflow.tflow()
            f.request = http.Request.make("POST", "https://api.openai.com/v1/chat/completions",
                                          REQUEST, headers)  # fmt: skip
            f.response = None
            resp = http.Response.make(200, b"", {"content-type": content_type})
            if buffered:  # what mitmproxy has when it read a body of known length whole
                resp.headers["content-length"] = str(sum(map(len, chunks)))
            else:
                del resp.headers["content-length"]
            pairs.append((f, resp))
        on_path = deferred = 0.0
        warmup = flows // 5
        for n, (f, resp) in enumerate(pairs):
            t0 = time.perf_counter()
            meter.requestheaders(f)
            meter.request(f)
            f.response = resp
            meter.responseheaders(f)
            stream = resp.stream
            if buffered:
                assert stream is False
                resp.raw_content = b"".join(chunks)
            else:
                assert callable(stream)
                for chunk in chunks:
                    stream(chunk)
                stream(b"")
            meter.response(f)
            t1 = time.perf_counter()
            for fn, args in queue:
                fn(*args)
            queue.clear()
            t2 = time.perf_counter()
            if n >= warmup:
                on_path += t1 - t0
                deferred += t2 - t1
        meter.done()
    counted = flows - warmup
    return on_path / counted * 1e6, deferred / counted * 1e6


def main() -> None:
    flows = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    for name, chunks, ctype, buffered in (
        ("JSON body, buffered", [JSON_BODY], "application/json", True),
        ("JSON chunked, 1 chunk", [JSON_BODY], "application/json", False),
        ("SSE, 8 chunks", SSE_CHUNKS, "text/event-stream", False),
    ):
        for durable in (True, False):
            on_path, deferred = measure(flows, chunks, ctype, buffered, durable)
            print(
                f"{name:20} meter_durable={str(durable).lower():5}  forwarding path "
                f"{on_path:6.1f} µs/flow   deferred {deferred:6.1f} µs/flow"
            )


if __name__ == "__main__":
    main()
