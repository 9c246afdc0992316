"""Every file that holds events is private to the proxy's user."""

from __future__ import annotations

import os
from pathlib import Path

import httpx2

from tests.conftest import ProxyFactory
from tests.faults.load import CALLS
from tests.support.upstream import FakeProvider


def test_store_and_spool_files_are_0600(
    start_proxy: ProxyFactory, fake_provider: FakeProvider
) -> None:
    old = os.umask(0o022)  # a permissive umask, as on most systems
    try:
        proxy = start_proxy(options={"meter_flush_interval": 3600})
    finally:
        os.umask(old)
    with httpx2.Client(proxy=proxy.url, timeout=30) as client:
        ids = [CALLS["openai-json"](client, fake_provider) for _ in range(3)]
    segments = list(proxy.spool.glob("meterline-*.open"))
    assert segments
    proxy.stop()  # drains into the store
    assert {r["request_id"] for r in proxy.events()} == set(ids)
    files: list[Path] = [proxy.db, *proxy.spool.iterdir(), proxy.spool]
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in files}
    print(f"FAULT permissions: {modes}")
    assert [name for name, mode in modes.items() if int(mode, 8) & 0o077] == []
