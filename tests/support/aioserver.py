"""A small aiohttp server on 127.0.0.1 in a thread, for tests whose provider answers
in one particular way (Ollama's native API, servers that repeat response ids)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.contextmanager
def serve_posts(routes: dict[str, Handler]) -> Iterator[int]:
    """Serve POST ``routes`` (path pattern -> handler); yields the port, stops after."""
    with serve({("POST", path): handler for path, handler in routes.items()}) as port:
        yield port


@contextlib.contextmanager
def serve(routes: dict[tuple[str, str], Handler]) -> Iterator[int]:
    """Serve ``routes`` ((method or "*", path pattern) -> handler); yields the port."""
    loop = asyncio.new_event_loop()
    app = web.Application()
    for (method, path), handler in routes.items():
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
