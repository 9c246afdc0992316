"""What metering can cost at least: the meter against variants of itself, side by side.

    .venv/bin/python bench/meter_floor.py [--rounds 2500] [--seconds 4]

mitmdumps with the same flags against one fake provider, as in bench/proxy_bench.py (a
spare one started first and never measured; two plain ones, started second and last):

- ``meter``: the addon as shipped (each answered call's event spooled before the reply);
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
  (``bench/floor/empty_hooks.py``): what mitmproxy charges for carrying it.

Reported: the JSON median of sequential calls (rotated rounds) and keep-alive requests/s
(three clients), each against the mean of the two plain mitmdumps.
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
        "capture": metered("capture", FLOOR / "capture_then_meter.py", *lazy),
        "after-reply": metered("after-reply", meter, *lazy),
        "minimal-durable": metered("minimal-durable", FLOOR / "minimal_durable.py"),
        "request-side": metered("request-side", FLOOR / "request_side_only.py"),
        "empty-hooks": ["-s", str(FLOOR / "empty_hooks.py")],
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
    print(f"{'':16}{'JSON median':>12}{'vs plain':>10}{'keep-alive/s':>14}{'vs plain':>10}")
    for p in measured:
        print(
            f"{p.name:16}{median[p.name]:10.3f} ms{median[p.name] / plain_ms:9.3f}x"
            f"{rps[p.name]:14.0f}{rps[p.name] / plain_rps:9.3f}x"
        )


if __name__ == "__main__":
    main()
