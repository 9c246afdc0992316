"""A key minted through one proxy of a fleet opens its session through another.

Behind a load balancer, an app's backend mints a Realtime key through one proxy and the
app's session lands on another. Before, that proxy had never seen the key: the session
was refused in ``reject`` mode (and billed to nobody otherwise). The proxies of a fleet
on a PostgreSQL lake now share the minted keys' fingerprints
(:mod:`addons.metering.fleetkeys`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from websockets.exceptions import InvalidStatus

from addons.metering.fleetkeys import TABLE
from meterline.entitlements.fleet import pg_query
from meterline.fingerprint import fingerprint
from meterline.lakerepair import metadata_alias
from meterline.store import store
from tests.conftest import KEYS, ProxyFactory
from tests.e2e.test_proxy_minted_keys import Minter, mint, minting_upstream, realtime_catalog
from tests.e2e.test_proxy_realtime import RealtimeProvider, session
from tests.support.postgres import postgres_server
from tests.support.proxy import MeterProxy


@pytest.fixture
def upstream() -> Iterator[tuple[RealtimeProvider, Minter, int]]:
    with minting_upstream() as provider_minter_port:
        yield provider_minter_port


@pytest.fixture
def lake(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with postgres_server() as conninfo:
        yield f"ducklake:postgres:{conninfo}", tmp_path / "lake-data"


def two_proxies(
    start_proxy: ProxyFactory, lake: tuple[str, Path], catalog: Path, options: dict[str, str]
) -> list[MeterProxy]:
    locator, data = lake
    return [
        start_proxy(
            catalog=catalog,
            options={"meter_db": locator, "meter_proxy_id": name, **options},
            env={"METERLINE_LAKE_DATA": str(data)},
            name=name,
        )
        for name in ("proxy-a", "proxy-b")
    ]


def lake_sessions(locator: str, count: int, timeout: float = 20.0) -> list[tuple[Any, ...]]:
    """(consumer, key fingerprint, proxy) of the lake's session events, once ``count``."""
    deadline = time.monotonic() + timeout
    rows: list[tuple[Any, ...]] = []
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(0.2)
        with store(locator) as con, contextlib.suppress(duckdb.CatalogException):
            rows = con.execute(  # no table until a proxy's writer made it
                "SELECT consumer, key_fingerprint, proxy_id FROM usage_events "
                "WHERE response_id IS NOT NULL ORDER BY ts"
            ).fetchall()
    return rows


def test_a_key_minted_through_one_proxy_opens_a_session_through_the_other(
    start_proxy: ProxyFactory,
    tmp_path: Path,
    lake: tuple[str, Path],
    upstream: tuple[RealtimeProvider, Minter, int],
) -> None:
    """``reject`` mode, two proxies on one lake: alice mints through proxy-a, and her
    app's session through proxy-b is let through and billed to her, under the minted
    key's fingerprint. A key no proxy saw minted is still refused by proxy-b (after its
    lookup), and neither the shared table nor a log holds a key."""
    provider, minter, port = upstream
    catalog = realtime_catalog(tmp_path, port)
    a, b = two_proxies(start_proxy, lake, catalog, {"meter_unknown_keys": "reject"})
    key = asyncio.run(mint(a.url, port, KEYS["alice"]))
    ended = asyncio.run(session(b, port, ["client"], key=key))
    assert [e["type"] for e in ended] == ["response.done"]
    assert provider.handshake_headers[0]["Authorization"] == f"Bearer {key}"

    with pytest.raises(InvalidStatus) as refused:
        asyncio.run(session(b, port, ["client"], key="ek_minted_by_no_proxy"))
    assert refused.value.response.status_code == 401
    assert provider.handshakes == 1

    assert lake_sessions(lake[0], 1) == [("alice", fingerprint(key), "proxy-b")]
    with store(lake[0]) as con:
        shared = pg_query(con, metadata_alias(), f"SELECT key_fp, owner_fp FROM {TABLE}")
    assert shared == [(fingerprint(key), fingerprint(KEYS["alice"]))]
    for proxy in (a, b):
        assert key not in proxy.log_text() and KEYS["alice"] not in proxy.log_text()


def test_without_reject_the_other_proxy_bills_the_minter(
    start_proxy: ProxyFactory,
    tmp_path: Path,
    lake: tuple[str, Path],
    upstream: tuple[RealtimeProvider, Minter, int],
) -> None:
    """The default unknown-key policy: the session through proxy-b was billed to nobody
    before; now to alice, who minted its key through proxy-a."""
    _, _, port = upstream
    a, b = two_proxies(start_proxy, lake, realtime_catalog(tmp_path, port), {})
    key = asyncio.run(mint(a.url, port, KEYS["alice"]))
    asyncio.run(session(b, port, ["client"], key=key))
    assert lake_sessions(lake[0], 1) == [("alice", fingerprint(key), "proxy-b")]
