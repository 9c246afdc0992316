"""The fleet's shared minted keys against a real PostgreSQL lake: what one proxy writes,
another finds; expired, unknown and unshared keys are not found."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from addons.metering.fleetkeys import LOOKUP_WAIT_S, MAX_LOOKUPS, FleetKeys, Minted
from tests.support.postgres import postgres_server


@pytest.fixture
def lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("METERLINE_LAKE_DATA", str(tmp_path / "lake-data"))
    with postgres_server() as conninfo:
        yield f"ducklake:postgres:{conninfo}"


def _proxy(locator: str) -> FleetKeys:
    keys = FleetKeys()
    keys.configure(locator)
    return keys


def test_a_key_one_proxy_saw_minted_is_found_by_another(lake: str) -> None:
    """Proxy a writes two mints (one expired); proxy b, with a connection of its own,
    finds the live one, and neither the expired nor an unknown one, after waiting its
    bound for a mint still being written."""
    a, b = _proxy(lake), _proxy(lake)
    now = time.time()
    try:
        a.publish("sha256:live", "sha256:alice", now + 600)
        a.publish("sha256:gone", "sha256:alice", now - 1)

        async def look() -> list[Minted | None]:
            return [await b.lookup(fp) for fp in ("sha256:live", "sha256:gone")]

        live, gone = asyncio.run(look())
        assert live == Minted("sha256:live", "sha256:alice", now + 600)
        assert gone is None
        started = time.monotonic()
        assert asyncio.run(b.lookup("sha256:never")) is None
        assert LOOKUP_WAIT_S - 0.3 <= time.monotonic() - started < LOOKUP_WAIT_S + 2
    finally:
        a.stop()
        b.stop()


def test_a_store_that_is_no_fleet_s_shares_nothing(tmp_path: Path) -> None:
    """A DuckDB file has one proxy: nothing is written, a lookup answers at once."""
    keys = _proxy(str(tmp_path / "events.duckdb"))
    assert not keys.enabled
    keys.publish("sha256:x", "sha256:alice", time.time() + 60)
    assert asyncio.run(keys.lookup("sha256:x")) is None
    keys.stop()


def test_sockets_past_the_bound_are_not_looked_up(lake: str) -> None:
    """A flood of sockets with made-up keys: the first MAX_LOOKUPS wait for their
    lookups, the others are answered at once, before any of those (no queue without
    bound, no load on the database)."""
    keys = _proxy(lake)
    done: list[int] = []

    async def one(n: int) -> None:
        assert await keys.lookup(f"sha256:made-up-{n}") is None
        done.append(n)

    async def flood() -> None:
        await asyncio.gather(*(one(n) for n in range(MAX_LOOKUPS + 8)))

    try:
        asyncio.run(flood())
    finally:
        keys.stop()
    assert done[:8] == list(range(MAX_LOOKUPS, MAX_LOOKUPS + 8))
    assert sorted(done[8:]) == list(range(MAX_LOOKUPS))


def test_a_fleet_database_that_does_not_answer_fails_each_lookup_not_the_thread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PostgreSQL unreachable: a lookup answers None (the socket is decided as if no proxy
    minted its key), a mint's write is dropped, and the thread lives on to answer the
    next lookup; the cause is logged once. Before, the first failure to attach ended
    the thread and every later socket with an unknown key waited forever."""
    keys = _proxy("ducklake:postgres:dbname=gone host=127.0.0.1 port=9 user=nobody")
    try:
        keys.publish("sha256:minted", "sha256:alice", time.time() + 60)
        assert asyncio.run(keys.lookup("sha256:minted")) is None
        assert asyncio.run(keys.lookup("sha256:other")) is None
    finally:
        keys.stop()
    warned = [r for r in caplog.records if "cannot share minted keys" in r.getMessage()]
    assert len(warned) == 1
