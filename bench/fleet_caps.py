"""How far a fleet of proxies on one DuckLake goes past a shared hard limit.

``--proxies`` real metered mitmdumps on one lake (a throwaway PostgreSQL catalog), one
customer with a hard limit of ``--cap`` output tokens a month. Each proxy is offered
``--rate`` calls per second for ``--seconds``, each answering ``--tokens`` output tokens
after ``--call-s`` seconds (the fake provider's ``think``), through the official
``openai`` SDK, with the shipped refresh and flush intervals unless given. Reported: the
calls admitted and refused, the tokens used against the cap, and the overshoot (what
the lake holds once every call ended, checked against the admitted calls).

Run it on an older checkout for a before/after (``PYTHONPATH=<checkout>``)::

    .venv/bin/python bench/fleet_caps.py --proxies 3 --cap 500000 --tokens 5000 \\
        --call-s 15 --rate 3 --seconds 40
    .venv/bin/python bench/fleet_caps.py --proxies 3 --cap 5000000 --tokens 250000 \\
        --call-s 0 --sequential 60
    .venv/bin/python bench/fleet_caps.py --proxies 3 --cap 2000000 --tokens 50000 \\
        --call-s 0 --rate 5 --seconds 20 --busy 1 [--share even]

Refusals are told apart: for a proxy's share (the cap had room: a lone busy proxy of an
evenly split fleet) or over the limit.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meterline.store import store  # noqa: E402
from tests.conftest import KEYS, PROVIDER_KEYS  # noqa: E402
from tests.support.clients import openai_client  # noqa: E402
from tests.support.governance import governed_catalog  # noqa: E402
from tests.support.postgres import postgres_server  # noqa: E402
from tests.support.proxy import MeterProxy  # noqa: E402
from tests.support.upstream import FakeProvider  # noqa: E402

CONSUMER = "carol"


def call(client: openai.OpenAI, tokens: int, call_s: float) -> str:
    """One call of ``tokens`` output tokens: "admitted", or why the proxy refused it (429):
    "share" (this proxy's share of the rest taken until the next round), "limit"."""
    think = f",think={call_s}" if call_s else ""
    try:
        client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=tokens,
            extra_headers={"x-fake": f"output={tokens}{think}"},
            timeout=call_s + 60,
        )
    except openai.RateLimitError as e:
        return "share" if "share of the rest" in str(e) else "limit"
    return "admitted"


def lake_tokens(locator: str) -> int:
    with store(locator) as con:
        row = con.execute(
            "SELECT coalesce(sum(output_tokens), 0) FROM usage_events WHERE consumer = ?",
            [CONSUMER],
        ).fetchone()
    return int(row[0]) if row else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proxies", type=int, default=3)
    ap.add_argument("--cap", type=int, default=500_000)
    ap.add_argument("--tokens", type=int, default=5000, help="output tokens per call")
    ap.add_argument("--call-s", type=float, default=15.0, help="seconds each call takes")
    ap.add_argument("--rate", type=float, default=3.0, help="calls offered per s per proxy")
    ap.add_argument("--seconds", type=float, default=40.0, help="how long calls are offered")
    ap.add_argument(
        "--sequential",
        type=int,
        default=0,
        help="instead: N calls one at a time, alternating between the proxies",
    )
    ap.add_argument(
        "--busy",
        type=int,
        default=0,
        help="offer the calls through the first N proxies only (default: all of them)",
    )
    ap.add_argument("--refresh", default="2.0", help="meter_governance_refresh")
    ap.add_argument("--share", default="demand", help="meter_governance_share")
    ap.add_argument("--flush", default="1.0", help="meter_flush_interval")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fleet-caps-"))
    atexit.register(shutil.rmtree, work, True)
    with postgres_server() as conninfo, FakeProvider(work) as upstream:
        locator = f"ducklake:postgres:{conninfo}"
        data = work / "lake-data"
        data.mkdir()
        catalog = governed_catalog(
            work / "catalog.yaml",
            upstream,
            {CONSUMER: KEYS[CONSUMER]},
            entitlements=[{"feature": "gpt-out", "limit": args.cap}],
        )
        env = {**PROVIDER_KEYS, "METERLINE_LAKE_DATA": str(data)}
        proxies = [
            MeterProxy(
                work / f"proxy-{n}",
                catalog=catalog,
                confdir=work / "confdir",
                options={
                    "ssl_insecure": True,
                    "meter_db": locator,
                    "meter_proxy_id": f"proxy-{n}",
                    "meter_governance_refresh": args.refresh,
                    "meter_flush_interval": args.flush,
                    "meter_governance_share": args.share,
                },
                env=env,
            ).start()
            for n in range(args.proxies)
        ]

        wait_for_each_other(proxies)  # a running fleet: each has read the others
        os.environ["METERLINE_LAKE_DATA"] = str(data)  # this process's reads of the lake
        clients = [openai_client(p, upstream, KEYS[CONSUMER]) for p in proxies]
        busy = clients[: args.busy or len(clients)]
        outcomes: dict[str, int] = {"admitted": 0, "share": 0, "limit": 0}
        last_admitted = 0.0
        lock = threading.Lock()

        def one(n: int) -> None:
            nonlocal last_admitted
            outcome = call(busy[n % len(busy)], args.tokens, args.call_s)
            with lock:
                outcomes[outcome] += 1
                if outcome == "admitted":
                    last_admitted = time.monotonic() - started

        started = time.monotonic()
        if args.sequential:
            for n in range(args.sequential):
                one(n)
        else:
            concurrency = int(args.rate * (args.call_s + 2) * args.proxies) + 8
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                n = 0
                step = 1 / (args.rate * len(busy))
                while time.monotonic() - started < args.seconds:
                    pool.submit(one, n)
                    n += 1
                    time.sleep(max(0.0, started + n * step - time.monotonic()))
        elapsed = time.monotonic() - started
        for c in clients:
            c.close()
        for p in proxies:
            p.stop()
        stored = lake_tokens(locator)
    admitted = outcomes["admitted"]
    used = admitted * args.tokens
    shape = (
        f"{args.sequential} sequential calls alternating"
        if args.sequential
        else f"{args.rate:g} calls/s per proxy for {args.seconds:g} s"
    )
    if args.busy:
        shape += f" through {args.busy} of them"
    print(
        f"{args.proxies} proxies, cap {args.cap:,}, calls of {args.tokens:,} tokens taking "
        f"{args.call_s:g} s, {shape} (refresh {args.refresh} s, flush {args.flush} s, "
        f"share {args.share}), "
        f"{elapsed:.0f} s:"
    )
    print(
        f"  admitted {admitted}, refused {outcomes['share'] + outcomes['limit']} "
        f"({outcomes['share']} for a proxy's share, {outcomes['limit']} over the limit); "
        f"used {used:,} (the lake holds {stored:,}); overshoot {used - args.cap:+,} "
        f"({used / args.cap:.3f}x the cap); last call admitted at {last_admitted:.1f} s"
    )


def wait_for_each_other(proxies: list[MeterProxy]) -> None:
    """Until every proxy's last read counted them all (a proxy just started knows none)."""
    deadline = time.monotonic() + 60
    while True:
        known = []
        for p in proxies:
            try:
                state = json.loads((p.spool / "governance.json").read_text())
            except (OSError, ValueError):
                state = {}
            known.append((state.get("fleet") or {}).get("proxies", 1))
        if all(n == len(proxies) for n in known) or len(proxies) == 1:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the proxies never read each other: {known}")
        time.sleep(0.1)


if __name__ == "__main__":
    main()
