"""The suite collects the same test ids every time (``pytest -n 2`` compares workers).

Each ``pytest-xdist`` worker collects on its own, with its own hash seed and at its own
moment; if a parametrize id is built from time (gzip output embeds it), randomness or
set order, the workers disagree and the run fails before a test runs. Two collections
in fresh interpreters with different hash seeds, more than a second apart, must agree.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _collect(seed: str) -> list[str]:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return [line for line in out.stdout.splitlines() if "::" in line]


def test_two_collections_agree() -> None:
    first = _collect("1")
    time.sleep(1.1)  # a second later: ids from time.time() or gzip headers would differ
    second = _collect("2")
    assert first, "nothing collected"
    assert first == second
