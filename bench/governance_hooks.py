"""CPU cost of enforcing entitlements per metered request, in-process (no sockets).

    .venv/bin/python bench/governance_hooks.py [FLOWS]

Times :meth:`Governance.check` + :meth:`Governance.finish` alone for a governed consumer
(two metered hard limits, a boolean model grant, a prepaid plan with two priced rate
cards; limits never reached), then runs bench/proxy_hooks.py's measurement twice on the
same flows: a consumer with nothing to enforce, and a governed one (the same plan, not
prepaid: no store is read here, so there is no balance), and prints the difference.
CPU time (``time.process_time``) is what counts; the machine's load adds noise.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from mitmproxy import http

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench.proxy_hooks as hooks  # noqa: E402
from addons.metering.governance import Governance  # noqa: E402
from meterline.catalog import load_catalog  # noqa: E402
from meterline.entitlements import Snapshot  # noqa: E402
from meterline.entitlements.reading import policy_keys  # noqa: E402
from meterline.fingerprint import fingerprint  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy.test import tflow

BIG = 10**15


def governed_catalog(
    path: Path, providers: Any, consumers: dict[str, list[str]], *, prepaid: bool = True
) -> Path:
    feature = {"provider": "openai", "model": "gpt-4o*"}
    doc = {
        "version": 1,
        "consumers": [
            {"name": n, "keys": [{"fingerprint": fingerprint(k)} for k in ks]}
            for n, ks in consumers.items()
        ],
        "features": [
            {"key": "in", "name": "in", "meter": {**feature, "token_types": ["input"]}},
            {"key": "out", "name": "out", "meter": {**feature, "token_types": ["output"]}},
        ],
        "plans": [
            {
                "key": "pro",
                "name": "Pro",
                "currency": "USD",
                "prepaid": prepaid,
                "rate_cards": [
                    {
                        "key": "in",
                        "name": "in",
                        "feature": "in",
                        "price": {"type": "unit", "amount": "2.50", "per": 1000000},
                    },
                    {
                        "key": "out",
                        "name": "out",
                        "feature": "out",
                        "price": {"type": "unit", "amount": "10.00", "per": 1000000},
                    },
                ],  # fmt: skip
                "entitlements": [
                    {"feature": "in", "limit": BIG},
                    {"feature": "out", "limit": BIG},
                    {"feature": "out", "type": "boolean"},
                ],
            }
        ],
        "customers": [
            {
                "key": "acme",
                "name": "ACME",
                "currency": "USD",
                "consumers": list(consumers),
                "subscriptions": [{"plan": "pro", "start": "2026-01-01T00:00:00Z"}],
            }
        ],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def read_every_counter(gov: Governance, balances: dict[str, Decimal]) -> None:
    """What the proxy's first store read does (here no loop runs the refresh thread's
    hand-over): every counter read, at 0, so none is held as never read."""
    now = datetime.now(UTC)
    gov.counters.apply(Snapshot(policy_keys(gov.policy, now), set(), balances, now))
    gov.ready = True


def check_alone(calls: int, *, prepaid: bool) -> tuple[float, float]:
    """µs of CPU per :meth:`Governance.check` and per :meth:`Governance.finish`."""
    work = Path(tempfile.mkdtemp())
    atexit.register(shutil.rmtree, work, True)
    path = governed_catalog(work / "c.yaml", [], {"alice": ["sk-b"]}, prepaid=prepaid)
    gov = Governance()
    gov.use_catalog(load_catalog(path))
    read_every_counter(gov, {"acme": Decimal(10**9)})
    headers = http.Headers(content_type="application/json", authorization="Bearer sk-b")
    fs = []
    for _ in range(100):
        f = tflow.tflow()
        f.request = http.Request.make("POST", "https://api.openai.com/v1/chat/completions",
                                      hooks.REQUEST, headers)  # fmt: skip
        fs.append(f)
    ts = datetime.now(UTC).replace(tzinfo=None).isoformat()
    rows = [
        [{"consumer": "alice", "provider": "openai", "model": "gpt-4o", "ts": ts,
          "input_tokens": 50, "cached_input_tokens": 0, "cache_write_tokens": 0,
          "cache_write_1h_tokens": 0, "audio_input_tokens": 0, "output_tokens": 7,
          "audio_output_tokens": 0, "web_search_calls": 0, "event_id": f"e{n}"}]
        for n in range(calls)
    ]  # fmt: skip
    checking = finishing = 0.0
    for n in range(calls):
        f = fs[n % 100]
        t0 = time.process_time()
        assert gov.check("alice", "openai", "openai", f) is True
        t1 = time.process_time()
        gov.finish(f.id, rows[n])
        finishing += time.process_time() - t1
        checking += t1 - t0
    return checking / calls * 1e6, finishing / calls * 1e6


def main() -> None:
    flows = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    plain_catalog = hooks.write_catalog
    for prepaid in (False, True):
        check, finish = check_alone(flows * 5, prepaid=prepaid)
        print(
            f"{'prepaid plan' if prepaid else 'limits only':20} check {check:5.1f} µs CPU "
            f"(request path)   finish {finish:5.1f} µs CPU (after the reply)"
        )
    for name, chunks, ctype, buffered in (
        ("JSON body, buffered", [hooks.JSON_BODY], "application/json", True),
        ("SSE, 8 chunks", hooks.SSE_CHUNKS, "text/event-stream", False),
    ):
        runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(3):  # alternated, best of three: the machine's load is noise
            for governed in (False, True):
                # No store is read here, so no credit balance: the plan is not prepaid.
                hooks.write_catalog = (  # type: ignore[assignment]
                    partial(governed_catalog, prepaid=False) if governed else plain_catalog
                )
                runs[governed].append(
                    hooks.measure(
                        flows, chunks, ctype, buffered,
                        prepare=lambda m: read_every_counter(m.governance, {}),
                    )
                )  # fmt: skip
        path0, deferred0 = (min(r[i] for r in runs[False]) for i in (0, 1))
        path1, deferred1 = (min(r[i] for r in runs[True]) for i in (0, 1))
        print(
            f"{name:20} forwarding path {path0:6.1f} -> {path1:6.1f} µs/flow "
            f"(+{path1 - path0:4.1f})   deferred {deferred0:6.1f} -> {deferred1:6.1f} µs/flow "
            f"(+{deferred1 - deferred0:4.1f})"
        )


if __name__ == "__main__":
    main()
