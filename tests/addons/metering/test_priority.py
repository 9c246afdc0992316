from __future__ import annotations

import os
import threading

from addons.metering.priority import (
    MAINTENANCE_NICENESS,
    WRITER_NICENESS,
    lower_thread_priority,
)


def _niceness_after(*steps: int) -> int:
    seen: list[int] = []

    def run() -> None:
        for niceness in steps:
            lower_thread_priority(niceness)
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return seen[0]


def test_background_threads_yield_to_the_event_loop_and_upkeep_to_the_writer() -> None:
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert _niceness_after(WRITER_NICENESS) == WRITER_NICENESS
    assert _niceness_after(MAINTENANCE_NICENESS) == MAINTENANCE_NICENESS
    # Never raised back: a thread once at the lowest priority stays there.
    assert _niceness_after(MAINTENANCE_NICENESS, WRITER_NICENESS) == MAINTENANCE_NICENESS
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
