"""CPU priority of the addon's background threads: the event loop (nice 0) comes first.

Under load the proxy's traffic and the agents get the CPU first, the writer catches up
in the gaps, and lake upkeep takes what is left. Linux sets a nice value per thread.
"""

from __future__ import annotations

import contextlib
import os
import threading

#: The writer thread: weight 110 vs 1024 at nice 0, so it is slowed down, never starved.
WRITER_NICENESS = 10
#: A lake maintenance pass (weight 15): on a busy host it delays no flush by its CPU,
#: only itself.
MAINTENANCE_NICENESS = 19


def lower_thread_priority(niceness: int) -> None:
    """Run the calling thread at ``niceness`` (best effort; a nicer thread keeps its own)."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed: no harm
        tid = threading.get_native_id()
        if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
            os.setpriority(os.PRIO_PROCESS, tid, niceness)
