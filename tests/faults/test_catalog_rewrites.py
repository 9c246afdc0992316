"""A catalog rewritten in place (truncate, write, write) under a proxy in reject mode:
no half-written file is ever used, and a catalog that drops every consumer is refused."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx2

from tests.conftest import KEYS, UNKNOWN_KEY, ProxyFactory
from tests.faults.load import wait_until
from tests.support.proxy import write_catalog
from tests.support.upstream import FakeProvider

REWRITES = 20
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _rewrite_in_place(path: Path, text: bytes, pause: float) -> None:
    """What an editor without atomic save does: truncate, write half, pause, write the rest."""
    with path.open("r+b") as f:
        f.truncate(0)
        f.write(text[: len(text) // 2])
        f.flush()
        os.fsync(f.fileno())
        time.sleep(pause)
        f.write(text[len(text) // 2 :])


def test_in_place_rewrites_never_let_a_call_through_unchecked(
    start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    path = write_catalog(
        tmp_path / "catalog.yaml", fake_provider.catalog_providers(), {"alice": [KEYS["alice"]]}
    )
    text = path.read_bytes()
    proxy = start_proxy(catalog=path, options={"meter_unknown_keys": "reject"})
    url = fake_provider.base_url("openai") + "/v1/chat/completions"
    stop = threading.Event()
    outcome = {"known_refused": 0, "unknown_forwarded": 0, "calls": 0, "errors": 0}
    known_ids: list[str] = []

    def calls() -> None:
        with httpx2.Client(proxy=proxy.url, timeout=60) as client:
            while not stop.is_set():
                try:
                    known = client.post(url, json=CHAT, headers=_bearer(KEYS["alice"]))
                    unknown = client.post(url, json=CHAT, headers=_bearer(UNKNOWN_KEY))
                except httpx2.HTTPError:  # a slow machine: not what this test is about
                    outcome["errors"] += 1
                    continue
                outcome["calls"] += 2
                outcome["known_refused"] += known.status_code != 200
                outcome["unknown_forwarded"] += unknown.status_code != 401
                if known.status_code == 200:
                    known_ids.append(known.headers["x-request-id"])

    caller = threading.Thread(target=calls)
    caller.start()
    try:
        for _ in range(REWRITES):
            _rewrite_in_place(path, text, 0.05)
            time.sleep(0.1)
        time.sleep(1.5)  # settled: the (complete) file is read again
        # A file cut to nothing that stays so is refused: it would drop every consumer.
        mark = proxy.log_mark()
        path.write_bytes(b"version: 1\n")
        proxy.wait_for_log(r"catalog \S+ not reloaded.*names no consumer", timeout=30, since=mark)
        time.sleep(0.3)
    finally:
        stop.set()
        caller.join(30)
    rows = proxy.wait_for_events(known_ids, timeout=60)
    unattributed = sum(r["consumer"] != "alice" for r in rows)
    print(f"FAULT catalog rewrites: {outcome | {'unattributed': unattributed}}")
    assert outcome["calls"] >= 4
    assert outcome["known_refused"] == outcome["unknown_forwarded"] == unattributed == 0
    wait_until(lambda: proxy.process is not None and proxy.process.poll() is None, 1, "proxy up")
