"""kill -9 of a proxy metering Realtime sessions, four times: no response the client was
told of (its ``response.done`` received) is lost, none is doubled.

The event is spooled in the ``websocket_message`` hook of the ``response.done`` message,
before mitmproxy forwards it: a client that received the message has its event on disk.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import KEYS, ProxyFactory
from tests.e2e.test_proxy_realtime import PROVIDER, RealtimeProvider
from tests.faults.load import Tally, wait_until
from tests.support.aioserver import serve
from tests.support.proxy import MeterProxy, one_provider_catalog

KILLS = 4
RESPONSES_PER_ROUND = 30
GO_ON = json.dumps({"type": "conversation.item.retrieve", "item_id": "go"})


@pytest.fixture
def upstream() -> Iterator[tuple[RealtimeProvider, int]]:
    provider = RealtimeProvider()
    with serve({("GET", "/v1/realtime"): provider.handle}) as port:
        yield provider, port


class Sessions:
    """Two clients running Realtime turns without pause, reconnecting (to the proxy's
    current port) whenever their session breaks; the response ids they received."""

    def __init__(self, proxy: MeterProxy, port: int) -> None:
        self.proxy, self.port = proxy, port
        self.received: list[str] = []
        self.stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> Sessions:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(30)

    async def _main(self) -> None:
        await asyncio.gather(self._client(), self._client())

    async def _client(self) -> None:
        url = f"http://127.0.0.1:{self.port}/v1/realtime?model=gpt-realtime"
        auth = {"Authorization": f"Bearer {KEYS['alice']}"}
        while not self.stop.is_set():
            if not self.proxy.port:  # being restarted
                await asyncio.sleep(0.05)
                continue
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.ws_connect(url, proxy=self.proxy.url, headers=auth) as ws,
                ):
                    while not self.stop.is_set():
                        await self._turn(ws)
            except (aiohttp.ClientError, ConnectionError, TimeoutError, ValueError):
                await asyncio.sleep(0.05)

    async def _turn(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        await ws.send_str(json.dumps({"type": "response.create"}))
        while True:
            msg = await ws.receive(timeout=10)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"session ended: {msg.type}")
            event = json.loads(msg.data)
            if event["type"] == "response.created":
                await ws.send_str(GO_ON)
            elif event["type"] == "response.done":
                self.received.append(event["response"]["id"])
                return


def test_kill_9_during_realtime_sessions_loses_and_doubles_nothing(
    start_proxy: ProxyFactory, tmp_path: Path, upstream: tuple[RealtimeProvider, int]
) -> None:
    _, port = upstream
    catalog = one_provider_catalog(
        tmp_path / "catalog.yaml", PROVIDER, port, {"alice": [KEYS["alice"]]}
    )
    proxy = start_proxy(catalog=catalog, options={"meter_flush_interval": 0.2})
    with Sessions(proxy, port) as sessions:
        for round_ in range(KILLS + 1):
            target = (round_ + 1) * RESPONSES_PER_ROUND
            wait_until(lambda t=target: len(sessions.received) >= t, 60, "responses")
            if round_ < KILLS:
                proxy.kill()  # SIGKILL: no hook runs, the spool is all there is
                proxy.port = 0
                proxy.start()  # replays the spool
    received = list(sessions.received)
    assert proxy.stop() == 0
    counts = Counter(r["response_id"] for r in proxy.events())
    result = Tally(
        len(received),
        sorted(set(received) - set(counts)),
        sorted(r for r, n in counts.items() if n > 1),
    )
    print(result.line("kill-9 realtime", kills=KILLS))
    assert result.lost == [] and result.doubled == [], proxy.log()
    assert len(received) >= (KILLS + 1) * RESPONSES_PER_ROUND
