"""What metering can cost at least: the meter against variants of itself, side by side.

    .venv/bin/python bench/meter_floor.py [--rounds 2500] [--seconds 4]

mitmdumps with the same flags against one fake provider, as in bench/proxy_bench.py (a
spare one started first and never measured; two plain ones, started second and last):

- ``meter``: the addon as shipped (each answered call's event spooled before the reply);
- ``meter-walk``: the same with ``meter_fast_dispatch=false``, mitmproxy's own hook
  dispatch (the meter as shipped before the hook index);
- ``capture``: the raw body written to a file before the reply and the call metered
  after it (``bench/floor/capture_then_meter.py``): the cheapest durable design inside
  the proxy process;
- ``after-reply``: ``meter_durable=false``, metered after the reply, nothing written
  before it;
- ``minimal-durable``: the request side as shipped, then before the reply the body
  parsed and an eight-field event appended to a file, no store
  (``bench/floor/minimal_durable.py``): a lower bound on any durable in-process meter;
- ``request-side``: provider, key and policy checks and the buffering decision, no
  metering at all (``bench/floor/request_side_only.py``): what identifying a call costs;
- ``empty-hooks``: an addon with the meter's five flow hooks, each empty
  (``bench/floor/empty_hooks.py``): what mitmproxy charges for carrying it;
- ``indexed``: plain mitmdump with only the meter's hook index
  (``bench/floor/indexed_dispatch.py``), which every variant built on the meter has.

Reported: the JSON median of sequential calls (rotated rounds) and keep-alive requests/s
(three clients), each against the mean of the two plain mitmdumps and against
``indexed`` (the variants' own cost once mitmproxy's dispatch is the same).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.proxy_bench import (  # noqa: E402
    API_KEY,
    fake_provider,
    json_latency,
    keepalive_rps,
    mitmdumps,
)
from tests.support.proxy import write_catalog  # noqa: E402

FLOOR = REPO / "bench" / "floor"


def variants(work: Path, catalog: Path) -> dict[str, list[str]]:
    """mitmdump arguments per variant (each with its own store and spool)."""

    def metered(name: str, script: Path, *more: str) -> list[str]:
        return ["-s", str(script), "--set", f"meter_catalog={catalog}",
                "--set", f"meter_db={work / name}.duckdb",
                "--set", f"meter_spool={work / name}-spool", *more]  # fmt: skip

    meter = REPO / "addons" / "meter.py"
    lazy = ("--set", "meter_durable=false")
    return {
        "plain": [],
        "meter": metered("meter", meter),
        "meter-walk": metered("meter-walk", meter, "--set", "meter_fast_dispatch=false"),
        "capture": metered("capture", FLOOR / "capture_then_meter.py", *lazy),
        "after-reply": metered("after-reply", meter, *lazy),
        "minimal-durable": metered("minimal-durable", FLOOR / "minimal_durable.py"),
        "request-side": metered("request-side", FLOOR / "request_side_only.py"),
        "empty-hooks": ["-s", str(FLOOR / "empty_hooks.py")],
        "indexed": ["-s", str(FLOOR / "indexed_dispatch.py")],
        "plain-late": [],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2500, help="sequential JSON rounds")
    ap.add_argument("--seconds", type=float, default=4.0, help="keep-alive run per proxy")
    opts = ap.parse_args()
    with fake_provider() as ports, tempfile.TemporaryDirectory() as tmp:
        base = f"http://127.0.0.1:{ports['plain']['openai']}"
        work = Path(tmp)
        catalog = write_catalog(work / "catalog.yaml", ports["providers"], {"bench": [API_KEY]})
        with mitmdumps(work, variants(work, catalog)) as measured:
            lat = json_latency(measured, base, opts.rounds)
            rps = {p.name: keepalive_rps(p, base, 3, opts.seconds) for p in measured}
    median = {name: statistics.median(v) for name, v in lat.items()}
    plain_ms = (median["plain"] + median["plain-late"]) / 2
    plain_rps = (rps["plain"] + rps["plain-late"]) / 2
    ix_ms, ix_rps = median["indexed"], rps["indexed"]
    print(
        f"{'':16}{'JSON median':>12}{'vs plain':>10}{'vs indexed':>11}"
        f"{'keep-alive/s':>14}{'vs plain':>10}{'vs indexed':>11}"
    )
    for p in measured:
        ms, r = median[p.name], rps[p.name]
        print(
            f"{p.name:16}{ms:10.3f} ms{ms / plain_ms:9.3f}x{ms / ix_ms:10.3f}x"
            f"{r:14.0f}{r / plain_rps:9.3f}x{r / ix_rps:10.3f}x"
        )


if __name__ == "__main__":
    main()
