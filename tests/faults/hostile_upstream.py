"""A provider that answers with hostile bodies, on 127.0.0.1 (OpenAI flavor paths).

``POST /<kind>/v1/chat/completions``:

- ``bomb``: a ~1 MB gzip body (Content-Length, so mitmproxy buffers it) that expands to
  1 GiB: 15 members of 64 MiB of spaces, then a chat completion with usage;
- ``bomb-chunked``: the same bytes, chunked (streamed by the proxy);
- ``big``: a 60 MB JSON chat completion without usage (Content-Length, streamed);
- ``small``: a small chat completion with usage.

Every response has an ``x-request-id``. The bodies are built once per process.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import uuid
from functools import cache

from aiohttp import web

MiB = 1024 * 1024
BOMB_MEMBERS = 15
BIG_BYTES = 60 * 1000 * 1000


def completion(content: str, *, usage: bool) -> bytes:
    body = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
    }
    if usage:
        body["usage"] = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    return json.dumps(body).encode()


@cache
def bomb() -> bytes:
    member = gzip.compress(b" " * (64 * MiB), compresslevel=9, mtime=0)
    return member * BOMB_MEMBERS + gzip.compress(completion("hi", usage=True), mtime=0)


@cache
def big() -> bytes:
    head = completion("", usage=False)
    pad = BIG_BYTES - len(head)
    return head.replace(b'"content": ""', b'"content": "' + b"a" * pad + b'"')


class HostileProvider:
    def __init__(self) -> None:
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> HostileProvider:
        bomb(), big()  # built before any timing starts
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()  # else its self-pipe sockets leak: ResourceWarning in a later test

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _start(self) -> None:
        app = web.Application(client_max_size=1024 * MiB)
        app.router.add_post("/{kind}/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        kind = request.match_info["kind"]
        headers = {"content-type": "application/json", "x-request-id": f"req_{uuid.uuid4().hex}"}
        if kind == "small":
            return web.Response(body=completion("hi", usage=True), headers=headers)
        if kind == "bomb":
            return web.Response(body=bomb(), headers=headers | {"content-encoding": "gzip"})
        body = bomb() if kind == "bomb-chunked" else big()
        resp = web.StreamResponse(headers=headers)
        if kind == "bomb-chunked":
            resp.headers["content-encoding"] = "gzip"
            resp.enable_chunked_encoding()
        else:
            resp.content_length = len(body)
        await resp.prepare(request)
        for i in range(0, len(body), MiB):
            await resp.write(body[i : i + MiB])
        await resp.write_eof()
        return resp
