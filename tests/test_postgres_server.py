"""The suite's throwaway PostgreSQL server leaves no process behind, even one a test made hang.

``tests/e2e/test_governance_outage.py`` stops the server's processes (SIGSTOP) to make
the store hang, then continues them. As root the server runs under ``runuser``, which
stopped itself with its child and stayed stopped: the fixture's SIGTERM never reached the
server, the fixture killed ``runuser`` after 20 s, and the server ran on, orphaned.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.support.postgres import _bin_dir, postgres_server


def _postmaster(conninfo: str) -> tuple[int, list[int]]:
    data = subprocess.run(
        [str(_bin_dir() / "psql"), conninfo, "-Atc", "SHOW data_directory"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    pid = int(Path(data, "postmaster.pid").read_text().split()[0])
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return pid, [int(c) for c in children.stdout.split()]


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _signal(pids: list[int], sig: signal.Signals) -> None:
    """Send ``sig`` to each of ``pids`` still running (the backend that answered
    ``_postmaster``'s query may be gone by now: CI met it)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def test_a_server_that_was_stopped_and_continued_is_stopped_and_gone() -> None:
    with postgres_server() as conninfo:
        postmaster, children = _postmaster(conninfo)
        _signal([postmaster, *children], signal.SIGSTOP)
        time.sleep(0.2)  # runuser sees its child stop, and stops itself
        _signal([postmaster, *children], signal.SIGCONT)
        started = time.monotonic()
    took = time.monotonic() - started
    assert not _running(postmaster), "the server outlived its fixture"
    assert took < 10, f"stopping the server took {took:.1f} s"


def test_a_server_left_stopped_by_a_failed_test_is_stopped_and_gone() -> None:
    """A test that fails while the server hangs never continues it."""
    with postgres_server() as conninfo:
        postmaster, children = _postmaster(conninfo)
        _signal([postmaster, *children], signal.SIGSTOP)
        started = time.monotonic()
    took = time.monotonic() - started
    assert not _running(postmaster), "the server outlived its fixture"
    assert took < 10, f"stopping the server took {took:.1f} s"
