"""What the meter costs on top of plain mitmdump, measured side by side in one run.

mitmdump processes run at once with the same flags against the same fake provider
(its own process, bench/upstream_server.py): a plain pass-through, one streaming every
response, one with ``-s addons/meter.py``, and a second plain one started last (the
noise floor; see :func:`bench_setup` for the start order). Requests alternate between
them, so drift in the machine's load hits all alike. Reported:

- JSON chat completions, sequential on a keep-alive connection: median and p99 latency,
  and what the meter adds (absolute and as a ratio); a fourth mitmdump, metered with
  ``meter_durable=false`` (events spooled after the reply), shows what the guarantee
  "every answered call is spooled before its answer completes" costs (also in the
  keep-alive requests/s); a fifth, plain with only the meter's hook index
  (``meter_fast_dispatch``), shows the meter's own cost apart from what the index saves;
- requests per second with concurrent keep-alive clients, and with a new TLS connection
  (CONNECT + handshake with the proxy's CA) per request;
- SSE streams with a pause between events: time to first byte and the gaps between
  events as the client sees them (a buffering proxy would show a first byte only after
  the whole response);
- resident memory of each mitmdump after many streamed flows.

Run: ``.venv/bin/python bench/proxy_bench.py`` (about two minutes; ``--quick`` for a smoke
run). Results are printed and written to bench/results/proxy.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from meterline.fingerprint import fingerprint  # noqa: E402
from tests.support.proxy import write_catalog  # noqa: E402

MITMDUMP = Path(sys.executable).with_name("mitmdump")
API_KEY = "sk-bench-key"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}]}
STREAM = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
HEADERS = {"authorization": f"Bearer {API_KEY}"}
#: A metered proxy with ``meter_durable=false``: what the durability guarantee costs.
AFTER_REPLY = "meter-after-reply"
#: A second plain mitmdump, started after all the others: the noise floor of every ratio.
PLAIN_LATE = "plain-late"
#: Plain mitmdump with the meter's hook index only (``bench/floor/indexed_dispatch.py``):
#: the meter's own cost once mitmproxy's dispatch costs what it does under the meter.
INDEXED = "plain-indexed"


@dataclass
class Proxy:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    confdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        return kib / 1024

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def start_proxy(name: str, workdir: Path, confdir: Path, extra: list[str]) -> Proxy:
    log = workdir / f"{name}.log"
    cmd = [str(MITMDUMP), "--listen-host", "127.0.0.1", "-p", "0", "--set", f"confdir={confdir}"]
    cmd += ["--set", "flow_detail=0", "--set", "ssl_insecure=true", *extra]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = re.search(r"proxy listening at 127\.0\.0\.1:(\d+)", log.read_text())
        if m:
            return Proxy(name, proc, int(m.group(1)), confdir)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{name} did not start:\n{log.read_text()[-3000:]}")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# --------------------------------------------------------------------------- measurements


def json_latency(proxies: list[Proxy], base: str, n: int) -> dict[str, list[float]]:
    clients = {p.name: httpx2.Client(proxy=p.url, timeout=10) for p in proxies}
    direct = httpx2.Client(timeout=10)
    out: dict[str, list[float]] = {p.name: [] for p in proxies} | {"direct": []}
    url = base + "/v1/chat/completions"
    try:
        order = [("direct", direct), *clients.items()]
        for i in range(n + 50):
            # Each round starts one place further on: the first proxy after the direct
            # call was measured 1-3% faster than an identical one later in the round.
            k = i % len(order)
            for name, client in order[k:] + order[:k]:
                t0 = time.perf_counter()
                r = client.post(url, json=CHAT, headers=HEADERS)
                elapsed = time.perf_counter() - t0
                assert r.status_code == 200, r.text
                if i >= 50:  # warm-up excluded
                    out[name].append(elapsed * 1000)
    finally:
        for c in [direct, *clients.values()]:
            c.close()
    return out


def _rps_worker(args: tuple[str, str, float]) -> int:
    proxy_url, url, seconds = args
    count = 0
    with httpx2.Client(proxy=proxy_url, timeout=10) as client:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            client.post(url, json=CHAT, headers=HEADERS).raise_for_status()
            count += 1
    return count


def keepalive_rps(proxy: Proxy, base: str, workers: int, seconds: float) -> float:
    url = base + "/v1/chat/completions"
    with mp.get_context("spawn").Pool(workers) as pool:
        counts = pool.map(_rps_worker, [(proxy.url, url, seconds)] * workers)
    return sum(counts) / seconds


def new_tls_rps(proxy: Proxy, tls_base: str, n: int) -> float:
    url = tls_base + "/v1/chat/completions"
    # One SSL context for all: loading the CA file per client would dominate the figure.
    ca = ssl.create_default_context(cafile=str(proxy.confdir / "mitmproxy-ca-cert.pem"))
    t0 = time.perf_counter()
    for _ in range(n):
        with httpx2.Client(proxy=proxy.url, verify=ca, timeout=10) as client:
            client.post(url, json=CHAT, headers=HEADERS).raise_for_status()
    return n / (time.perf_counter() - t0)


def sse_timing(proxy: Proxy | None, base: str, n: int, delay: float) -> dict[str, list[float]]:
    client = httpx2.Client(proxy=proxy.url if proxy else None, timeout=10)
    headers = {**HEADERS, "x-fake": f"delay={delay}"}
    ttfb: list[float] = []
    gaps: list[float] = []
    total: list[float] = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            stamps: list[float] = []
            with client.stream(
                "POST", base + "/v1/chat/completions", json=STREAM, headers=headers
            ) as r:
                for _chunk in r.iter_raw():
                    stamps.append(time.perf_counter())
            ttfb.append((stamps[0] - t0) * 1000)
            gaps += [(b - a) * 1000 for a, b in zip(stamps, stamps[1:], strict=False)]
            total.append((stamps[-1] - t0) * 1000)
    finally:
        client.close()
    return {"ttfb": ttfb, "gaps": gaps, "total": total}


def stream_many(proxy: Proxy, base: str, n: int) -> None:
    with httpx2.Client(proxy=proxy.url, timeout=10) as client:
        for _ in range(n):
            with client.stream(
                "POST", base + "/v1/chat/completions", json=STREAM, headers=HEADERS
            ) as r:
                for _chunk in r.iter_raw():
                    pass


# --------------------------------------------------------------------------- the run


def best_of(runs: int, fn: Callable[[], float]) -> float:
    return max(fn() for _ in range(runs))


@contextmanager
def fake_provider() -> Iterator[dict[str, Any]]:
    """bench/upstream_server.py in its own process; yields its ports."""
    upstream = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "upstream_server.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert upstream.stdout is not None and upstream.stdin is not None
    try:
        yield json.loads(upstream.stdout.readline())
    finally:
        upstream.stdin.close()
        upstream.wait(10)
        upstream.stdout.close()


@contextmanager
def mitmdumps(work: Path, specs: dict[str, list[str]]) -> Iterator[list[Proxy]]:
    """One mitmdump per ``specs`` entry (name: extra arguments), started in that order
    after a spare plain one that is never measured; yields them; stops them all.

    Start order: identical mitmdumps measured 1-2% apart by the order they were started
    in, the first one started fastest (cause not found). With the spare first, no
    measured proxy is the one favoured; a second plain one started last
    (:data:`PLAIN_LATE`) shows the noise floor of every ratio in the same run."""
    confdir = work / "confdir"
    started: list[Proxy] = []
    try:
        started.append(start_proxy("spare", work, confdir, []))
        for name, extra in specs.items():
            started.append(start_proxy(name, work, confdir, extra))
        yield started[1:]
    finally:
        for p in started:
            if p.process.poll() is None:
                p.stop()


@contextmanager
def bench_setup(*, after_reply: bool = False) -> Iterator[tuple[dict[str, Any], list[Proxy], Path]]:
    """The fake provider and mitmdumps with the same flags: plain, streaming every
    response, metered (and metered after the reply, and plain with the meter's hook
    index), and plain again, started last (:func:`mitmdumps`). Yields (ports, proxies,
    workdir)."""
    with fake_provider() as ports, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        catalog = write_catalog(work / "catalog.yaml", ports["providers"], {"bench": [API_KEY]})
        assert fingerprint(API_KEY) in catalog.read_text()
        meter = ["-s", str(REPO / "addons" / "meter.py"),
                 "--set", f"meter_catalog={catalog}",
                 "--set", f"meter_db={work / 'meterline.duckdb'}",
                 "--set", f"meter_spool={work / 'spool'}"]  # fmt: skip
        specs = {
            "plain": [],
            "streaming": ["-s", str(REPO / "bench" / "stream_passthrough.py")],
            "meter": meter,
        }
        if after_reply:  # the same, without the durability guarantee: its cost
            specs[AFTER_REPLY] = [*meter[:-4], "--set", f"meter_db={work / 'lazy.duckdb'}",
                                  "--set", f"meter_spool={work / 'lazy-spool'}",
                                  "--set", "meter_durable=false"]  # fmt: skip
            specs[INDEXED] = ["-s", str(REPO / "bench" / "floor" / "indexed_dispatch.py")]
        specs[PLAIN_LATE] = []
        with mitmdumps(work, specs) as proxies:
            yield ports, proxies, work


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "proxy.json"))
    opts = ap.parse_args()
    n_json, n_tls, n_sse, n_mem, secs = (
        (200, 30, 10, 100, 1.0) if opts.quick else (2000, 200, 60, 2000, 4.0)
    )

    with bench_setup(after_reply=True) as (ports, proxies, work):
        plain, streaming, meter, after_reply, indexed, plain_late = proxies
        base = f"http://127.0.0.1:{ports['plain']['openai']}"
        tls_base = f"https://127.0.0.1:{ports['tls']['openai']}"
        results: dict[str, Any] = {"machine": f"{os.cpu_count()} cores", "counts": {}}
        try:
            print(f"JSON latency: {n_json} sequential requests per proxy, interleaved ...")
            lat = json_latency(proxies, base, n_json)
            results["json_ms"] = {
                k: {"median": statistics.median(v), "p99": pct(v, 99)} for k, v in lat.items()
            }

            print(f"Requests/s: 3 keep-alive clients x {secs}s, best of 2, alternating ...")
            rps = {p.name: 0.0 for p in proxies}
            for _ in range(2):
                for p in proxies:
                    rps[p.name] = max(rps[p.name], keepalive_rps(p, base, 3, secs))
            results["keepalive_rps"] = rps

            print(f"Requests/s: new TLS connection per request, {n_tls} sequential ...")
            proxies = [plain, streaming, meter]  # the rest compares these three
            tls_rps = {p.name: 0.0 for p in proxies}
            for _ in range(2):
                for p in proxies:
                    tls_rps[p.name] = max(tls_rps[p.name], new_tls_rps(p, tls_base, n_tls // 2))
            results["new_tls_rps"] = tls_rps

            print(f"SSE: {n_sse} streams per proxy, 20 ms between events ...")
            sse: dict[str, dict[str, list[float]]] = {"direct": {}} | {p.name: {} for p in proxies}
            for _ in range(2):
                for name, proxy in (("direct", None), *((p.name, p) for p in proxies)):
                    part = sse_timing(proxy, base, n_sse // 2, 0.02)
                    for k, v in part.items():
                        sse[name].setdefault(k, []).extend(v)
            results["sse_ms"] = {
                name: {
                    "ttfb_median": statistics.median(v["ttfb"]),
                    "ttfb_p99": pct(v["ttfb"], 99),
                    "gap_median": statistics.median(v["gaps"] or [0.0]),
                    "gap_p99": pct(v["gaps"] or [0.0], 99),
                    "total_median": statistics.median(v["total"]),
                }
                for name, v in sse.items()
            }

            print(f"Memory: RSS after {n_mem} more streamed flows per proxy ...")
            before = {p.name: p.rss_mib() for p in proxies}
            for p in proxies:
                stream_many(p, base, n_mem)
            results["rss_mib"] = {
                p.name: {"before": before[p.name], "after": p.rss_mib()} for p in proxies
            }
        finally:
            for p in (*proxies, after_reply, indexed, plain_late):
                p.stop()
        import duckdb

        with duckdb.connect(str(work / "meterline.duckdb"), read_only=True) as con:
            metered = con.execute("SELECT count(*) FROM usage_events").fetchone()[0]  # type: ignore[index]
        results["counts"] = {"events_metered": metered}
    report(results)
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(results, indent=2))


def report(r: dict[str, Any]) -> None:
    names = ("plain", "streaming", "meter")
    j = r["json_ms"]
    added = j["meter"]["median"] - j["plain"]["median"]
    print("\n== JSON chat completion, sequential keep-alive (ms)")
    print(f"{'':14}{'median':>10}{'p99':>10}")
    for name in ("direct", *names, INDEXED, PLAIN_LATE):
        print(f"{name:14}{j[name]['median']:10.3f}{j[name]['p99']:10.3f}")
    print(
        f"meter adds {added:+.3f} ms at the median "
        f"({j['meter']['median'] / j['plain']['median']:.3f}x plain), "
        f"{j['meter']['p99'] - j['plain']['p99']:+.3f} ms at p99"
    )
    both = (j["plain"]["median"] + j[PLAIN_LATE]["median"]) / 2
    print(
        f"noise floor: {PLAIN_LATE} (identical to plain, started last) "
        f"{j[PLAIN_LATE]['median'] / j['plain']['median']:.3f}x plain; "
        f"meter {j['meter']['median'] / both:.3f}x the mean of the two"
    )
    print(
        f"meter against {INDEXED} (plain mitmdump with the meter's hook index): "
        f"{j['meter']['median'] / j[INDEXED]['median']:.3f}x, the meter's own cost"
    )
    lazy = j[AFTER_REPLY]
    print(
        f"{AFTER_REPLY} (meter_durable=false) {lazy['median']:.3f} ms median "
        f"({lazy['median'] / j['plain']['median']:.3f}x plain): the guarantee that an answered "
        f"call is spooled costs {j['meter']['median'] - lazy['median']:+.3f} ms at the median, "
        f"{j['meter']['p99'] - lazy['p99']:+.3f} ms at p99"
    )
    for key, label in (("keepalive_rps", "keep-alive, 3 clients"), ("new_tls_rps", "new TLS/req")):
        v = r[key]
        print(
            f"\n== requests/s, {label}: plain {v['plain']:.0f}, streaming {v['streaming']:.0f}, "
            f"meter {v['meter']:.0f} ({v['meter'] / v['plain']:.3f}x plain)"
            + (f", {AFTER_REPLY} {v[AFTER_REPLY]:.0f}" if AFTER_REPLY in v else "")
            + (f", {PLAIN_LATE} {v[PLAIN_LATE]:.0f}" if PLAIN_LATE in v else "")
            + (
                f", {INDEXED} {v[INDEXED]:.0f} (meter {v['meter'] / v[INDEXED]:.3f}x it)"
                if INDEXED in v
                else ""
            )
        )
    s = r["sse_ms"]
    print("\n== SSE, 20 ms between events (ms); 'plain' mitmdump buffers, 'streaming' does not")
    print(f"{'':10}{'ttfb med':>10}{'ttfb p99':>10}{'gap med':>10}{'gap p99':>10}{'total':>10}")
    for name in ("direct", *names):
        v = s[name]
        print(
            f"{name:10}{v['ttfb_median']:10.3f}{v['ttfb_p99']:10.3f}{v['gap_median']:10.3f}"
            f"{v['gap_p99']:10.3f}{v['total_median']:10.3f}"
        )
    delta = s["meter"]["ttfb_median"] - s["streaming"]["ttfb_median"]
    print(
        f"meter's time to first byte: {delta:+.3f} ms vs streaming mitmdump; "
        f"the full response takes {s['meter']['total_median']:.1f} ms"
    )
    m = r["rss_mib"]
    print("\n== RSS (MiB) before -> after the streamed flows")
    for name in names:
        print(f"{name:10}{m[name]['before']:8.1f} -> {m[name]['after']:8.1f}")
    print(f"\nevents metered by the meter proxy: {r['counts']['events_metered']}")


if __name__ == "__main__":
    main()
