"""kill -9 of a loaded proxy, five times: no answered call is lost, none is doubled."""

from __future__ import annotations

from tests.conftest import ProxyFactory
from tests.faults.load import CALLS, Load, tally, wait_until
from tests.support.upstream import FakeProvider

KILLS = 5
CALLS_PER_ROUND = 25


def test_kill_9_loop_loses_and_doubles_nothing(
    start_proxy: ProxyFactory, fake_provider: FakeProvider
) -> None:
    """Four clients call without pause (JSON and SSE, OpenAI and Anthropic); the proxy
    is killed whenever another CALLS_PER_ROUND calls were answered, and restarted."""
    proxy = start_proxy(options={"meter_flush_interval": 0.2})
    load = Load(proxy, fake_provider, threads=4).start()
    try:
        for round_ in range(KILLS + 1):
            target = (round_ + 1) * CALLS_PER_ROUND
            wait_until(lambda t=target: len(load.answered_ids) >= t, 60, "answered calls")
            if round_ < KILLS:
                proxy.kill()  # SIGKILL: no hook runs, the spool is all there is
                proxy.port = 0  # its port is free for anyone now: clients wait for the new one
                proxy.start()  # replays the spool
    finally:
        load.stop()
    assert proxy.stop() == 0  # SIGTERM: drains into DuckDB
    result = tally(proxy, load.answered_ids)
    print(result.line("kill-9", kills=KILLS, failed_in_flight=load.failed))
    assert set(load.answered) == set(CALLS)
    assert result.lost == [] and result.doubled == [], (
        f"store read error: {proxy.last_read_error}\nproxy log:\n{proxy.log()}"
    )
