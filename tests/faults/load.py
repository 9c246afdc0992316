"""Concurrent API calls through a proxy that may die under them, and what they prove.

:class:`Load` runs a few client threads that call the fake provider through the proxy
(whatever port it listens on now: a restarted proxy gets a new one) and remember every
call that was *answered*: the client read its whole answer, as an SDK does (an OpenAI
stream is done at ``data: [DONE]``, the SDK stops reading there). :func:`tally` then
compares the answered calls with the events in the store: lost, doubled.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from tests.conftest import KEYS
from tests.support.proxy import MeterProxy
from tests.support.upstream import FakeProvider

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello there"}]}
MESSAGES = {"model": "claude-sonnet-4-6", "max_tokens": 20, "messages": CHAT["messages"]}

Call = Callable[[httpx2.Client, FakeProvider], str]
"""Makes one API call; returns its ``x-request-id`` once the answer is complete."""


def openai_json(client: httpx2.Client, upstream: FakeProvider) -> str:
    r = client.post(
        upstream.base_url("openai") + "/v1/chat/completions",
        json=CHAT,
        headers={"authorization": f"Bearer {KEYS['alice']}"},
    )
    r.raise_for_status()
    r.json()
    return r.headers["x-request-id"]


def openai_sse(client: httpx2.Client, upstream: FakeProvider) -> str:
    """Read like the OpenAI SDK: stop at ``data: [DONE]`` and close the response."""
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    headers = {"authorization": f"Bearer {KEYS['alice']}"}
    url = upstream.base_url("openai") + "/v1/chat/completions"
    with client.stream("POST", url, json=body, headers=headers) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: [DONE]"):
                return r.headers["x-request-id"]
    raise httpx2.RemoteProtocolError("stream ended without [DONE]")


def anthropic_json(client: httpx2.Client, upstream: FakeProvider) -> str:
    r = client.post(
        upstream.base_url("anthropic") + "/v1/messages",
        json=MESSAGES,
        headers={"x-api-key": KEYS["bob"], "anthropic-version": "2023-06-01"},
    )
    r.raise_for_status()
    r.json()
    return r.headers["x-request-id"]


def anthropic_sse(client: httpx2.Client, upstream: FakeProvider) -> str:
    """Read to the end of the stream, as the Anthropic SDK does."""
    headers = {"x-api-key": KEYS["bob"], "anthropic-version": "2023-06-01"}
    url = upstream.base_url("anthropic") + "/v1/messages"
    with client.stream("POST", url, json={**MESSAGES, "stream": True}, headers=headers) as r:
        r.raise_for_status()
        for _ in r.iter_bytes():
            pass
        return r.headers["x-request-id"]


CALLS: dict[str, Call] = {
    "openai-json": openai_json,
    "openai-sse": openai_sse,
    "anthropic-json": anthropic_json,
    "anthropic-sse": anthropic_sse,
}


@dataclass
class Load:
    proxy: MeterProxy
    upstream: FakeProvider
    threads: int = 4
    answered: dict[str, list[str]] = field(default_factory=dict)
    """Call kind -> request ids of the calls answered in full."""
    failed: int = 0
    latencies: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, kinds: list[str] | None = None) -> Load:
        kinds = kinds or list(CALLS)
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(kinds, i), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(30)

    def _run(self, kinds: list[str], offset: int) -> None:
        n = offset
        client: httpx2.Client | None = None
        while not self._stop.is_set():
            kind = kinds[n % len(kinds)]
            n += 1
            if client is None:
                port = self.proxy.port
                if not port or self.proxy.process is None:
                    time.sleep(0.05)
                    continue
                client = httpx2.Client(proxy=f"http://127.0.0.1:{port}", timeout=30)
            t0 = time.perf_counter()
            try:
                request_id = CALLS[kind](client, self.upstream)
            except (httpx2.HTTPError, KeyError, ValueError):
                with self._lock:
                    self.failed += 1
                client.close()
                client = None
                time.sleep(0.05)  # the proxy is down: leave the CPU to its restart
                continue
            elapsed = time.perf_counter() - t0
            with self._lock:
                self.answered.setdefault(kind, []).append(request_id)
                self.latencies.append(elapsed)
        if client is not None:
            client.close()

    @property
    def answered_ids(self) -> list[str]:
        return [r for ids in self.answered.values() for r in ids]


@dataclass
class Tally:
    answered: int
    lost: list[str]
    doubled: list[str]

    def line(self, name: str, **extra: Any) -> str:
        figures = {"answered": self.answered, "lost": len(self.lost), "doubled": len(self.doubled)}
        return f"FAULT {name}: " + json.dumps(figures | extra)


def tally(proxy: MeterProxy, answered: list[str], timeout: float = 30.0) -> Tally:
    """Answered calls without an event (lost), and request ids stored more than once.

    An answered call's event may still be in the spool, durably, until the writer's next
    flush: the store is read again until every answered call is there or ``timeout`` passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        counts = Counter(r["request_id"] for r in proxy.events())
        lost = sorted(set(answered) - set(counts))
        if not lost or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    doubled = sorted(r for r, n in counts.items() if n > 1)
    return Tally(len(answered), lost, doubled)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")
