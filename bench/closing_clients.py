"""How many calls of clients that close at ``[DONE]`` are metered complete and exact.

Each run is a fresh official openai SDK client (its own connection) that streams a real
recorded OpenAI chat answer through a real mitmdump with the addon, stops at
``data: [DONE]`` and closes at once (tests/support/closing.py). The replay upstream keeps
the body open ``--linger`` seconds after ``[DONE]``, so the client is gone before the
body ends. Half the runs ask for ``stream_options.include_usage`` themselves, half leave
it to the proxy (which adds it and hides the usage chunk).

``--processes``: each run is a new Python process instead (import, connect, stream,
exit), as a short-lived agent would be; much slower (about a second per run).

A run counts as exact when its event has ``status`` 200, the recording's input and
output tokens and ``estimated`` false.

Usage::

    .venv/bin/python bench/closing_clients.py                 # 200 runs, linger 0.3 s
    .venv/bin/python bench/closing_clients.py --runs 50 --processes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import KEYS, new_proxy  # noqa: E402
from tests.support.closing import RECORDING, Run, stream_and_close, wait_for_rows  # noqa: E402
from tests.support.proxy import MeterProxy, write_catalog  # noqa: E402
from tests.support.recordings import load_recordings  # noqa: E402
from tests.support.replay import ReplayUpstream  # noqa: E402

_CHILD = """
import json, sys
sys.path.insert(0, {repo!r})
from tests.support.closing import stream_and_close
from tests.support.proxy import MeterProxy
from tests.support.replay import ReplayUpstream
proxy = MeterProxy.__new__(MeterProxy)
proxy.port, proxy.confdir = {port}, __import__("pathlib").Path({confdir!r})
upstream = ReplayUpstream.__new__(ReplayUpstream)
upstream.tls_ports = {{"openai": {upstream_port}}}
run = stream_and_close(proxy, upstream, {key!r}, linger={linger}, include_usage={usage})
print(json.dumps([run.request_id, run.include_usage, run.chunks]))
"""


def _run_in_process(
    proxy: MeterProxy, upstream: ReplayUpstream, linger: float, include_usage: bool
) -> Run:
    code = _CHILD.format(
        repo=str(REPO),
        port=proxy.port,
        confdir=str(proxy.confdir),
        upstream_port=upstream.tls_ports["openai"],
        key=KEYS["alice"],
        linger=linger,
        usage=include_usage,
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    request_id, usage, chunks = json.loads(out.stdout.strip().splitlines()[-1])
    return Run(request_id, usage, chunks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--linger", type=float, default=0.3)
    parser.add_argument("--processes", action="store_true", help="one process per client")
    args = parser.parse_args()
    runs_wanted = max(1, min(args.runs, 2000))
    [rec] = [r for r in load_recordings() if r.id == RECORDING]
    expected = rec.meta["expected"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        confdir = work / "confdir"
        confdir.mkdir()
        with ReplayUpstream([rec], work) as upstream:
            catalog = write_catalog(
                work / "catalog.yaml",
                upstream.catalog_providers(),
                consumers={"alice": [KEYS["alice"]]},
            )
            proxy = new_proxy(work / "proxy", confdir, catalog).start()
            try:
                started = time.monotonic()
                runs = []
                for i in range(runs_wanted):
                    usage = bool(i % 2)
                    if args.processes:
                        runs.append(_run_in_process(proxy, upstream, args.linger, usage))
                    else:
                        runs.append(
                            stream_and_close(
                                proxy,
                                upstream,
                                KEYS["alice"],
                                linger=args.linger,
                                include_usage=usage,
                            )
                        )
                elapsed = time.monotonic() - started
                by_id = wait_for_rows(proxy, [r.request_id for r in runs], timeout=60)
                cut_lines = proxy.log_text().count("cut short")
            finally:
                proxy.stop()
    exact = 0
    statuses: dict[str, int] = {}
    for run in runs:
        rows = by_id.get(run.request_id, [])
        row = rows[0] if len(rows) == 1 else {}
        statuses[str(row.get("status"))] = statuses.get(str(row.get("status")), 0) + 1
        exact += (
            row.get("status") == 200
            and row.get("input_tokens") == expected["input_tokens"]
            and row.get("output_tokens") == expected["output_tokens"]
            and row.get("estimated") is False
        )
    mode = "processes" if args.processes else "fresh clients in one process"
    print(f"{runs_wanted} runs ({mode}), upstream lingers {args.linger}s after [DONE]:")
    print(f"  exact and complete (status 200, reported tokens): {exact}/{runs_wanted}")
    print(f"  statuses: {statuses}; 'cut short' log lines: {cut_lines}")
    print(f"  client side: {elapsed:.1f}s ({elapsed / runs_wanted * 1000:.0f} ms per run)")
    sys.exit(0 if exact == runs_wanted else 1)


if __name__ == "__main__":
    main()
