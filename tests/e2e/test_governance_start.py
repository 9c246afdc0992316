"""Governance while the proxy starts, through the real proxy: a subscription that begins
after the start, and a store another process holds locked at the start."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openai
import pytest

from tests.conftest import KEYS, ProxyFactory
from tests.e2e.test_governance import ALICE, chat, rows_where
from tests.support.clients import openai_client
from tests.support.governance import governed_catalog
from tests.support.proxy import MeterProxy
from tests.support.upstream import FakeProvider

#: Another process holding the DuckDB file (a long ``billing`` run, a duckdb shell),
#: until its stdin closes.
HOLD = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("SELECT 1")
print("locked", flush=True)
sys.stdin.read()
con.close()
"""


@contextmanager
def store_held(path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holds the DuckDB file at ``path`` until ``release`` (or the end)."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
        try:
            yield proc
        finally:
            release(proc)


def release(proc: subprocess.Popen[str]) -> None:
    if proc.stdin is not None and not proc.stdin.closed:
        proc.stdin.close()
    proc.wait(timeout=30)


@pytest.mark.parametrize("policy", ["allow", "deny"])
def test_a_subscription_that_starts_while_the_proxy_runs_is_checked_at_once(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory, policy: str
) -> None:
    """No consumer is governed at start; the only subscription (hard limit 300) begins a
    few seconds later. Before, its first calls got 503 (``deny``: "the store is
    unreachable", though it was fine; ``allow``: "being read") until a read the first
    call triggered. Now the store is read at start, so the new period is known: the calls
    are checked at once, counted from the subscription's start (a call before it does
    not count)."""
    begin = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=8)
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        start=begin,
        entitlements=[{"feature": "gpt-out", "limit": 300}],
    )
    proxy = start_proxy(catalog=catalog, options={"meter_governance_failure": policy})
    with openai_client(proxy, fake_provider, KEYS["alice"]) as client:
        if datetime.now(UTC) < begin:
            chat(client, 100)  # no subscription yet: forwarded, outside the period
        while datetime.now(UTC) < begin + timedelta(seconds=0.2):
            time.sleep(0.05)
        for _ in range(3):
            chat(client, 100)  # 300: reaches the limit, allowed
        with pytest.raises(openai.RateLimitError):
            chat(client, 100)
    ts = begin.replace(tzinfo=None)
    rows = rows_where(proxy, f"reason IS NULL AND ts >= TIMESTAMP '{ts.isoformat(' ')}'", 3)
    assert sum(r["output_tokens"] for r in rows) == 300
    assert rows_where(proxy, "reason IS NOT NULL", 1)[0]["reason"] == "limit:gpt-out"


def restarted_with_the_store_held(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory, policy: str
) -> tuple[MeterProxy, MeterProxy]:
    """A proxy killed (-9) with 200 tokens still in its spool, and the same proxy made
    again (not started) with ``meter_governance_failure=policy``."""
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        entitlements=[{"feature": "gpt-out", "limit": 300}],
    )
    # Flushing every 60 s: the events are still in the spool when the proxy is killed.
    first = start_proxy(catalog=catalog, options={"meter_flush_interval": 60})
    with openai_client(first, fake_provider, KEYS["alice"]) as client:
        chat(client, 100)
        chat(client, 100)
    deadline = time.monotonic() + 30  # the events reach the spool (written after the reply)
    while sum(p.read_bytes().count(b"\n") for p in first.spool.glob("*.[oj]*")) < 2:
        assert time.monotonic() < deadline, "the two events never reached the spool"
        time.sleep(0.02)
    first.kill()
    again = MeterProxy(
        first.workdir,
        catalog=catalog,
        confdir=first.confdir,
        options={
            **first.options,
            "meter_flush_interval": 0.1,
            "meter_governance_failure": policy,
            "meter_governance_refresh": "0.5",
        },
        env=first.env,
    )
    return first, again


@pytest.mark.parametrize("policy", ["allow", "deny"])
def test_a_store_locked_at_start_never_holds_calls(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory, policy: str
) -> None:
    """Another process holds the DuckDB file while the proxy restarts with 200 tokens of
    an earlier run in its spool (limit 300). Before, the start-up flush and the first
    read of the store ran on the event loop, each waiting 30 s for the lock: the proxy
    was not ready for a minute and calls hung up to 90 s. Now the proxy is ready at once
    and the failure policy answers within seconds: ``allow`` counts the spooled 200 (one
    call of 100 admitted, the next refused), ``deny`` refuses (503). Once the store is
    free, the limit is exact: 300 used, each event once."""
    first, again = restarted_with_the_store_held(tmp_path, fake_provider, start_proxy, policy)
    with store_held(first.db) as holder:
        again.start(timeout=20)  # before: not ready for 30 s and more
        try:
            with openai_client(again, fake_provider, KEYS["alice"]) as client:
                started = time.monotonic()
                if policy == "allow":
                    chat(client, 100)  # 200 spooled + 100: the limit, allowed
                    with pytest.raises(openai.RateLimitError):
                        chat(client, 100)
                else:
                    with pytest.raises(openai.InternalServerError) as err:
                        chat(client, 100)
                    assert err.value.status_code == 503
                    assert "cannot be checked" in err.value.message
                assert time.monotonic() - started < 10  # before: 27 s and more
            release(holder)
            again.wait_for_log(r"usage limits enforced from the store", timeout=60)
            with openai_client(again, fake_provider, KEYS["alice"]) as client:
                if policy == "deny":
                    chat(client, 100)  # 200 spooled + 100: the limit, allowed
                with pytest.raises(openai.RateLimitError):
                    chat(client, 100)
            rows = rows_where(again, "reason IS NULL", 3, timeout=60)
            assert sum(r["output_tokens"] for r in rows) == 300
        finally:
            again.stop()
