"""A real proxy whose lake's disk is unmounted under it, then mounted again.

Found by an independent probe: the mount vanished for 8 s under a running proxy; DuckDB
made the directories again and the writer committed 8 flushes (270 rows) into the empty
mountpoint, hidden once the disk was back, and every read of the lake failed."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from meterline.store import store
from tests.conftest import KEYS, ProxyFactory
from tests.support.clients import Clients
from tests.support.postgres import create_database, postgres_server
from tests.support.proxy import MeterProxy
from tests.support.upstream import FakeProvider


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with postgres_server() as conninfo:
        yield conninfo


def _calls(proxy: MeterProxy, fake_provider: FakeProvider, n: int) -> list[str]:
    made = Clients(proxy, fake_provider)
    try:
        gpt = made.openai(KEYS["alice"])
        ids = []
        for _ in range(n):
            gpt.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
            )
            ids.append(fake_provider.last().request_id)
        return ids
    finally:
        made.close()


def _stored(lake: str) -> set[str]:
    with store(lake) as con:
        try:
            rows = con.execute("SELECT request_id FROM usage_events").fetchall()
        except duckdb.CatalogException:  # the first flush has not made the table yet
            return set()
    return {r[0] for r in rows}


def test_a_proxy_writes_nothing_while_its_lake_disk_is_unmounted(
    server: str,
    tmp_path: Path,
    start_proxy: ProxyFactory,
    fake_provider: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mount = tmp_path / "mnt"
    data = f"{mount}/lake/"
    monkeypatch.setenv("METERLINE_LAKE_DATA", data)
    lake = f"ducklake:postgres:{create_database(server, 'mount')}"
    proxy = start_proxy(
        options={"meter_db": lake, "meter_proxy_id": "eu-1"},
        env={"METERLINE_LAKE_DATA": data, "METERLINE_LAKE_MAINTAIN_EVERY": "0"},
    )
    before = _calls(proxy, fake_provider, 3)
    deadline = time.monotonic() + 30
    while not set(before) <= _stored(lake) and time.monotonic() < deadline:
        time.sleep(0.1)
    mount.rename(tmp_path / "mnt.away")  # the disk goes away under the running proxy
    mount.mkdir()
    during = _calls(proxy, fake_provider, 3)
    time.sleep(1.5)  # several flush intervals (0.1 s): each must refuse
    assert sorted(mount.rglob("*.parquet")) == []
    assert f"check that the lake's disk is mounted at {data}" in proxy.log_path.read_text()
    shutil.rmtree(mount)
    (tmp_path / "mnt.away").rename(mount)
    deadline = time.monotonic() + 30
    while not set(before + during) <= _stored(lake) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert set(before + during) <= _stored(lake)
