"""End-to-end latency through plain mitmdump vs metered mitmdump (same fake upstream).

    .venv/bin/python -m tests.support.latency [REQUESTS] [ROUNDS]

Sequential requests over one keep-alive connection (plain HTTP to the proxy), JSON and
SSE, each proxy started in turn ROUNDS times so drift hits both alike. Prints the
median and p90 of the request time, and the median difference. On a shared machine
the noise is of the order of the difference: use many requests and rounds.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx2

from tests.support.proxy import MeterProxy, write_catalog
from tests.support.upstream import FakeProvider

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi " * 50}]}


def run(proxy: MeterProxy, upstream: FakeProvider, stream: bool, requests: int) -> list[float]:
    body = dict(CHAT, stream=True, stream_options={"include_usage": True}) if stream else CHAT
    url = upstream.base_url("openai") + "/v1/chat/completions"
    times = []
    with httpx2.Client(proxy=proxy.url, timeout=10) as client:
        for i in range(requests + 20):
            t = time.perf_counter()
            with client.stream(
                "POST", url, json=body, headers={"authorization": "Bearer sk-bench"}
            ) as resp:
                for _ in resp.iter_raw():
                    pass
            if i >= 20:  # warm-up
                times.append(time.perf_counter() - t)
    return times


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    work = Path(tempfile.mkdtemp())
    results: dict[tuple[str, bool], list[float]] = {}
    with FakeProvider(work) as upstream:
        catalog = write_catalog(
            work / "catalog.yaml", upstream.catalog_providers(), {"bench": ["sk-bench"]}
        )
        for r in range(rounds):
            for name in ("plain", "meter"):
                proxy = MeterProxy(
                    work / f"{name}-{r}",
                    catalog=catalog,
                    confdir=work / "confdir",
                    addon=name == "meter",
                ).start()
                try:
                    for stream in (False, True):
                        results.setdefault((name, stream), []).extend(
                            run(proxy, upstream, stream, requests)
                        )
                finally:
                    proxy.stop()
    for stream in (False, True):
        kind = "SSE " if stream else "JSON"
        medians = {}
        for name in ("plain", "meter"):
            t = sorted(results[(name, stream)])
            medians[name] = statistics.median(t) * 1000
            p90 = t[int(len(t) * 0.9)] * 1000
            print(f"{kind} {name:5} n={len(t)} median {medians[name]:.3f} ms  p90 {p90:.3f} ms")
        print(f"{kind} added median {medians['meter'] - medians['plain']:+.3f} ms")


if __name__ == "__main__":
    main()
