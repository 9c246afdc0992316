"""Decompression bombs and huge bodies pass through untouched while the meter's work
stays bounded: memory, and the latency of the small calls running alongside."""

from __future__ import annotations

import hashlib
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.conftest import ProxyFactory
from tests.faults.hostile_upstream import HostileProvider, big, bomb
from tests.faults.load import rss_mib, tally
from tests.support.proxy import write_catalog

KEY = "sk-hostile-test-key-0000000001"
HEADERS = {"authorization": f"Bearer {KEY}"}
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
#: Generous bounds: the suite runs on a loaded 2-core machine, and the client, the
#: upstream and the proxy share it (the figures are printed; docs/durability-and-security.md).
#: Before the limits one bomb took the proxy from 284 to 2,331 MB RSS and stalled every
#: call for 13.8 s; three bombs and the 60 MB body would stall for well over a minute.
MAX_RSS_GROWTH_MIB = 250
MAX_P99_S = 10.0


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileProvider]:
    with HostileProvider() as provider:
        yield provider


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def test_bombs_and_huge_bodies_are_bounded(
    start_proxy: ProxyFactory, hostile: HostileProvider, tmp_path: Path
) -> None:
    catalog = write_catalog(
        tmp_path / "catalog.yaml",
        [{"name": "hostile", "flavor": "openai", "hosts": [f"127.0.0.1:{hostile.port}"]}],
        {"tester": [KEY]},
    )
    proxy = start_proxy(catalog=catalog)
    assert proxy.process is not None
    pid = proxy.process.pid
    small_url = hostile.base_url + "/small/v1/chat/completions"
    answered: list[str] = []

    def small_calls(n: int | None, stop: threading.Event) -> list[float]:
        latencies = []
        with httpx2.Client(proxy=proxy.url, timeout=30) as client:
            while (n is None and not stop.is_set()) or (n is not None and len(latencies) < n):
                t0 = time.perf_counter()
                r = client.post(small_url, json=CHAT, headers=HEADERS)
                latencies.append(time.perf_counter() - t0)
                assert r.status_code == 200
                answered.append(r.headers["x-request-id"])
        return latencies

    baseline = small_calls(60, threading.Event())
    rss_before = rss_mib(pid)
    peak = [rss_before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak.append(rss_mib(pid))
            time.sleep(0.02)

    during: list[float] = []
    sampler = threading.Thread(target=sample, daemon=True)
    smalls = threading.Thread(target=lambda: during.extend(small_calls(None, stop)))
    sampler.start()
    smalls.start()
    hostile_ids = []
    try:
        with httpx2.Client(proxy=proxy.url, timeout=60) as client:
            for kind, expected in [
                ("bomb", bomb()),
                ("bomb-chunked", bomb()),
                ("big", big()),
                ("bomb", bomb()),
            ]:
                url = f"{hostile.base_url}/{kind}/v1/chat/completions"
                digest = hashlib.sha256()
                size = 0
                with client.stream("POST", url, json=CHAT, headers=HEADERS) as r:
                    for chunk in r.iter_raw():  # as sent: still gzip for the bombs
                        digest.update(chunk)
                        size += len(chunk)
                    hostile_ids.append(r.headers["x-request-id"])
                # Every byte passed through unchanged.
                assert (size, digest.hexdigest()) == (
                    len(expected),
                    hashlib.sha256(expected).hexdigest(),
                ), kind
    finally:
        stop.set()
        smalls.join(60)
        sampler.join(5)
    rows = proxy.wait_for_events(hostile_ids, timeout=30)
    assert [r["estimated"] for r in rows] == [True] * len(hostile_ids)  # flagged estimates
    result = tally(proxy, answered + hostile_ids)
    growth = max(peak) - rss_before
    figures = {
        "rss_before_mib": round(rss_before),
        "rss_peak_mib": round(max(peak)),
        "small_calls_p99_ms": round(_p99(during) * 1000, 1),
        "baseline_p99_ms": round(_p99(baseline) * 1000, 1),
        "small_calls_median_ms": round(statistics.median(during) * 1000, 1),
        "small_calls_during": len(during),
    }
    print(result.line("bombs and a 60 MB body", **figures))
    assert result.lost == [] and result.doubled == []
    assert growth < MAX_RSS_GROWTH_MIB, figures
    assert _p99(during) < MAX_P99_S, figures
    log = proxy.log_text()
    assert "decoded body over" in log and "no usage at its end" in log
    assert "Traceback" not in log
