"""CPU cost of the addon per flow, in-process (no sockets): what metering adds to mitmproxy.

    .venv/bin/python bench/proxy_hooks.py [FLOWS] [--cold]

A JSON body of known length is buffered by mitmproxy, not streamed, and is metered from
the response hook; SSE is streamed through the stream callable.

Splits the cost into the forwarding path (the hooks mitmproxy waits for, and the
stream callable) and the deferred part (parsing, event, spool write) that runs on the
event loop after the bytes were handed on. The background writer is kept out of it.
With ``meter_durable`` (the default) the event of a JSON body is spooled before the
reply, so its metering is on the forwarding path; each case is also measured with
``meter_durable=false`` to show what that guarantee moves there.

Times are this thread's CPU. Run back to back, the hooks find their code and data in the
CPU caches; in a proxy they do not (between two hooks of a flow mitmproxy, other
connections and the kernel run). ``--cold`` touches 8 MB between flows to show that
cost, which is what a metered proxy pays (see bench/README.md).
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import sys
import tempfile
import time
import warnings
from collections import deque
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


#: Bytes touched between two flows with ``--cold``: more than the CPU caches hold.
EVICT_BYTES = 8 * 1024 * 1024


def evict_caches(buffer: bytearray) -> None:
    """Touch every cache line of ``buffer`` (as a real proxy's other work does between
    two hooks of one flow: other connections, mitmproxy itself, the kernel)."""
    for i in range(0, len(buffer), 64):
        buffer[i] ^= 1


def measure(
    flows: int,
    chunks: list[bytes],
    content_type: str,
    buffered: bool,
    durable: bool = True,
    cold: bool = False,
    prepare: Callable[[Meter], None] | None = None,
) -> tuple[float, float]:
    """(forwarding-path µs, deferred µs) per metered flow. ``prepare`` runs on the
    configured meter before the flows (bench/governance_hooks.py hands it a store read)."""
    work = Path(tempfile.mkdtemp())
    atexit.register(shutil.rmtree, work, True)
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
        # Deferred work waits in the addon's own queue (as on the event loop, where it runs
        # a step later): a durable finish drains it first, the rest is timed as deferred.
        queue: deque[tuple[Callable[..., None], tuple[Any, ...]]] = meter.deferred.pending
        meter.deferred.defer = lambda fn, *a: queue.append((fn, a))  # type: ignore[method-assign]
        meter._open_spool()
        if prepare is not None:
            prepare(meter)
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
        junk = bytearray(EVICT_BYTES if cold else 0)
        for n, (f, resp) in enumerate(pairs):
            if cold:
                evict_caches(junk)
            t0 = time.thread_time()
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
            t1 = time.thread_time()
            meter.deferred.drain()
            t2 = time.thread_time()
            if n >= warmup:
                on_path += t1 - t0
                deferred += t2 - t1
        meter.done()
    counted = flows - warmup
    return on_path / counted * 1e6, deferred / counted * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("flows", nargs="?", type=int, default=3000)
    ap.add_argument("--cold", action="store_true", help="evict the CPU caches between flows")
    opts = ap.parse_args()
    flows, cold = opts.flows, opts.cold
    for name, chunks, ctype, buffered in (
        ("JSON body, buffered", [JSON_BODY], "application/json", True),
        ("JSON chunked, 1 chunk", [JSON_BODY], "application/json", False),
        ("SSE, 8 chunks", SSE_CHUNKS, "text/event-stream", False),
    ):
        for durable in (True, False):
            on_path, deferred = measure(flows, chunks, ctype, buffered, durable, cold)
            print(
                f"{name:20} meter_durable={str(durable).lower():5}  forwarding path "
                f"{on_path:6.1f} µs/flow   deferred {deferred:6.1f} µs/flow"
            )


if __name__ == "__main__":
    main()
