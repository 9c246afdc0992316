"""What a billing command pays for staged lines: ``billing usage``, whole, on a lake
holding ``--staged`` staged lines, then after they are moved (output compared).

Usage::

    .venv/bin/python bench/staged_reads.py --staged 30000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meterline import lakestage  # noqa: E402
from meterline.migrations import EVENT_MIGRATIONS, migrate  # noqa: E402
from meterline.store import store  # noqa: E402
from tests.support.postgres import create_database, postgres_server  # noqa: E402

BILLING = Path(sys.executable).with_name("billing")
BATCH = 3000


def _line(n: int) -> bytes:
    event = {
        "event_id": f"ml:bench-{n}", "ts": "2026-12-05T10:00:00", "consumer": "alice",
        "key_fingerprint": "sha256:" + "ab" * 32, "provider": "openai", "flavor": "openai",
        "model": "gpt-4o", "input_tokens": 5, "cached_input_tokens": 0,
        "cache_write_tokens": 0, "output_tokens": 7, "reasoning_tokens": 0, "estimated": False,
        "response_id": "chatcmpl-abcdefghijklmnop", "request_id": f"req_{n:016x}",
        "method": "POST", "host": "api.openai.com", "path": "/v1/chat/completions",
        "status": 200, "streamed": False, "latency_ms": 123.4, "ttft_ms": 12.3,
        "proxy_id": "eu-1",
    }  # fmt: skip
    return json.dumps(event).encode()


def _usage(lake: str, runs: int) -> tuple[float, str]:
    """Median wall seconds of ``billing usage`` and its output."""
    times, out = [], ""
    for _ in range(runs):
        started = time.perf_counter()
        cmd = [str(BILLING), "--db", lake, "--catalog", str(ROOT / "catalog.yaml"), "usage"]
        run = subprocess.run([*cmd, "--format", "json"], capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(run.stderr)
        times.append(time.perf_counter() - started)
        out = run.stdout
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--staged", type=int, default=30_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="meterline-reads-") as tmp, postgres_server() as pg:
        work = Path(tmp)
        os.environ["METERLINE_LAKE_DATA"] = str(work / "lake-data")
        lake = "ducklake:postgres:" + create_database(pg, "staged_reads")
        with store(lake) as con:
            migrate(con, EVENT_MIGRATIONS)
            lakestage.create(con)
        empty, _ = _usage(lake, args.runs)
        with closing(lakestage.connect(lake)) as conn:
            for start in range(0, args.staged, BATCH):
                end = min(start + BATCH, args.staged)
                lakestage.stage(conn, [_line(n) for n in range(start, end)])
            staged, before = _usage(lake, args.runs)
            with store(lake) as con:
                moved_events = lakestage.move(con, conn, work)
        moved, after = _usage(lake, args.runs)
        report = {
            "staged_lines": args.staged,
            "usage_s_empty_lake": round(empty, 3),
            "usage_s_lines_staged": round(staged, 3),
            "usage_s_after_the_move": round(moved, 3),
            "moved": moved_events,
            "same_output": before == after,
        }
        print(json.dumps({"load": os.getloadavg(), **report}, indent=1))


if __name__ == "__main__":
    main()
