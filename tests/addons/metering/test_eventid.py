"""Event ids name one call (addons/metering/eventid.py)."""

from __future__ import annotations

import re
import subprocess
import sys

from addons.metering.eventid import beside_id, new_event_id

EVENT_ID = re.compile(r"ml:[0-9a-f]{16}-[1-9][0-9]*")


def test_every_call_gets_its_own_id() -> None:
    ids = [new_event_id() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    assert all(EVENT_ID.fullmatch(i) for i in ids)


def test_two_processes_never_share_ids() -> None:
    """A fleet's proxies, or one proxy across a restart, draw different tokens."""
    code = "from addons.metering.eventid import new_event_id; print(new_event_id())"
    runs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    }
    assert len(runs) == 2 and all(EVENT_ID.fullmatch(i) for i in runs)


def test_beside_ids() -> None:
    assert beside_id("ml:0123456789abcdef-1", 0) == "ml:0123456789abcdef-1#0"
