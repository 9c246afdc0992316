"""CPU time each proxy spends per request, from /proc: where the meter's overhead goes.

Latency and requests/s (bench/proxy_bench.py) move with everything else on a shared
machine; CPU seconds per request, read from ``/proc/<pid>/task/*/stat`` around a fixed
number of sequential keep-alive requests, are much steadier. The meter's writer thread
runs at nice +10, so its share is reported apart from the event loop's (nice 0).

    .venv/bin/python bench/proxy_cpu.py [REQUESTS] [ROUNDS]

Linux only. Proxies: plain mitmdump, mitmdump streaming every response
(bench/stream_passthrough.py), and the meter.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy_bench import CHAT, HEADERS, Proxy, bench_setup  # noqa: E402


def cpu_by_nice(pid: int) -> dict[int, int]:
    """Clock ticks (user + system) used so far by the threads of ``pid``, by nice value."""
    ticks: dict[int, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        nice = int(fields[16])
        ticks[nice] = ticks.get(nice, 0) + int(fields[11]) + int(fields[12])
    return ticks


def cpu_per_request(proxy: Proxy, url: str, n: int) -> dict[int, float]:
    """µs of CPU per request by nice value, over ``n`` sequential keep-alive requests."""
    with httpx2.Client(proxy=proxy.url, timeout=10) as client:
        for _ in range(50):  # warm-up
            client.post(url, json=CHAT, headers=HEADERS).raise_for_status()
        time.sleep(1.2)  # let a pending flush of the warm-up pass
        before = cpu_by_nice(proxy.process.pid)
        for _ in range(n):
            client.post(url, json=CHAT, headers=HEADERS).raise_for_status()
        time.sleep(1.2)  # the writer's flush of these requests counts too
        after = cpu_by_nice(proxy.process.pid)
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    return {k: (after[k] - before.get(k, 0)) * tick_us / n for k in after}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with bench_setup() as (ports, proxies, _work):
        url = f"http://127.0.0.1:{ports['plain']['openai']}/v1/chat/completions"
        loop: dict[str, list[float]] = {p.name: [] for p in proxies}
        background: dict[str, list[float]] = {p.name: [] for p in proxies}
        for _ in range(rounds):
            for p in proxies:
                used = cpu_per_request(p, url, n)
                loop[p.name].append(used.get(0, 0.0))
                background[p.name].append(sum(v for k, v in used.items() if k != 0))
    print(f"CPU µs per request, median of {rounds} rounds x {n} sequential JSON requests")
    print(f"{'':10}{'nice 0':>10}{'nice 10':>10}{'total':>10}{'vs plain':>10}")
    base = statistics.median(loop["plain"]) + statistics.median(background["plain"])
    for name in loop:
        main_us, bg_us = statistics.median(loop[name]), statistics.median(background[name])
        total = main_us + bg_us
        print(f"{name:10}{main_us:10.0f}{bg_us:10.0f}{total:10.0f}{total - base:+10.0f}")


if __name__ == "__main__":
    main()
