"""The suite's throwaway PostgreSQL server leaves no process behind, even one a test made hang.

``tests/e2e/test_governance_outage.py`` stops the server's processes (SIGSTOP) to make
the store hang, then continues them. As root the server runs under ``runuser``, which
stopped itself with its child and stayed stopped: the fixture's SIGTERM never reached the
server, the fixture killed ``runuser`` after 20 s, and the server ran on, orphaned.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.support.postgres import postgres_server, server_pids, signal_each


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_a_server_that_was_stopped_and_continued_is_stopped_and_gone() -> None:
    with postgres_server() as conninfo:
        pids = server_pids(conninfo)
        signal_each(pids, signal.SIGSTOP)
        time.sleep(0.2)  # runuser sees its child stop, and stops itself
        signal_each(pids, signal.SIGCONT)
        started = time.monotonic()
    took = time.monotonic() - started
    assert not _running(pids[0]), "the server outlived its fixture"
    assert took < 10, f"stopping the server took {took:.1f} s"


def test_a_server_left_stopped_by_a_failed_test_is_stopped_and_gone() -> None:
    """A test that fails while the server hangs never continues it."""
    with postgres_server() as conninfo:
        pids = server_pids(conninfo)
        signal_each(pids, signal.SIGSTOP)
        started = time.monotonic()
    took = time.monotonic() - started
    assert not _running(pids[0]), "the server outlived its fixture"
    assert took < 10, f"stopping the server took {took:.1f} s"
