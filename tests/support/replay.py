"""A fake upstream that answers with recorded provider responses, byte for byte.

One plain-HTTP and one TLS port (self-signed; the proxy runs with ``ssl_insecure``) per
provider of the corpus on 127.0.0.1 (the proxy tells providers apart by host and port,
and names each event's provider after the catalog entry). The
request picks the recording with the ``x-replay: <provider>/<name>`` header; the body is
served as the recording's ``meta.response`` says: its status, content type and
encoding, with a ``Content-Length`` or chunked. A chunked SSE body is written event by
event, any other chunked body in pieces of :data:`PIECE` bytes, so the proxy reads it
incrementally as it would a live stream. Each answer carries a fresh
``x-request-id``, which the test uses to find its event.

``x-replay-linger: SECONDS`` keeps a chunked body open that long after its last piece
before ending it: a provider that is slow to close the stream after ``data: [DONE]``.
``x-replay-no-request-id: 1`` leaves the ``x-request-id`` header out (as Gemini does).
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.support.recordings import Recording
from tests.support.upstream import LoopbackServers

PIECE = 997  # an odd size: pieces split SSE events and gzip blocks anywhere


class ReplayUpstream(LoopbackServers):
    def __init__(self, recordings: list[Recording], workdir: Path) -> None:
        providers = sorted({r.provider for r in recordings})
        super().__init__(workdir, providers)
        self.recordings = {r.id: r for r in recordings}
        self.providers = providers
        self.flavors = {r.provider: r.flavor for r in recordings}
        self.received: dict[str, bytes] = {}
        """Request body received per request id (what the proxy forwarded)."""

    def catalog_providers(self) -> list[dict[str, Any]]:
        """Catalog entries named after the corpus providers (``xai``, ``groq`` ...)."""
        return [
            {
                "name": p,
                "flavor": self.flavors[p],
                "hosts": [f"127.0.0.1:{self.ports[p]}", f"127.0.0.1:{self.tls_ports[p]}"],
            }
            for p in self.providers
        ]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rec = self.recordings.get(request.headers.get("x-replay", ""))
        if rec is None:
            return web.Response(status=404, text="no such recording")
        request_id = f"req_{uuid.uuid4().hex}"
        self.received[request_id] = await request.read()
        spec = rec.meta["response"]
        body = rec.body
        headers = {"content-type": spec["content_type"], "x-request-id": request_id}
        if request.headers.get("x-replay-no-request-id"):
            del headers["x-request-id"]
        if spec.get("content_encoding"):
            headers["content-encoding"] = spec["content_encoding"]
        if spec["transfer"] == "content-length":
            return web.Response(status=spec["status"], body=body, headers=headers)
        resp = web.StreamResponse(status=spec["status"], headers=headers)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        sse = spec["content_type"].startswith("text/event-stream")
        linger = float(request.headers.get("x-replay-linger", "0") or 0)
        try:
            for piece in _pieces(body, sse=sse and not spec.get("content_encoding")):
                await resp.write(piece)
            if linger > 0:
                await asyncio.sleep(min(linger, 5.0))
            await resp.write_eof()
        except ConnectionResetError:  # the proxy gave up on the body (its client left)
            pass
        return resp


def _pieces(body: bytes, *, sse: bool) -> list[bytes]:
    """SSE (not content-encoded): one piece per event; anything else: fixed-size pieces."""
    if sse:
        parts = body.split(b"\n\n")
        pieces = [p + b"\n\n" for p in parts[:-1]]
        if parts[-1]:
            pieces.append(parts[-1])
        return pieces
    return [body[i : i + PIECE] for i in range(0, len(body), PIECE)] or [b""]
