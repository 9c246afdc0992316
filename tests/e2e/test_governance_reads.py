"""The real proxy re-reads a store full of the period's events: once whole, then only
what was ingested since (:mod:`meterline.entitlements.windowsums`), limits exact."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import pytest

from addons.metering.storereads import SUMS_FILE
from tests.billing.events import Event, add_events
from tests.conftest import KEYS, ProxyFactory
from tests.e2e.test_governance import chat
from tests.e2e.test_governance_fleet import fleet_state
from tests.support.clients import openai_client
from tests.support.governance import governed_catalog
from tests.support.postgres import postgres_server
from tests.support.proxy import MeterProxy
from tests.support.upstream import FakeProvider


def reads(proxy: MeterProxy) -> dict[str, Any]:
    """How the proxy's store reads went (``governance.json``): whole, recent-only."""
    path = proxy.spool / "governance.json"
    if not path.exists():
        return {}
    return dict(json.loads(path.read_text()).get("reads") or {})


def wait_for_reads(proxy: MeterProxy, recent_only: int, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while reads(proxy).get("recent_only", 0) < recent_only:
        assert time.monotonic() < deadline, f"reads: {reads(proxy)}"
        time.sleep(0.05)
    return reads(proxy)


def full_store(
    tmp_path: Path, fake_provider: FakeProvider, db: Path | str | None = None
) -> tuple[Path | str, Path]:
    """A store (a DuckDB file, or ``db``) holding 9,000 of alice's 10,000 output tokens,
    stored an hour ago (with 500 events of a stranger), and the catalog that limits her."""
    db = tmp_path / "events.duckdb" if db is None else db
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    stored = [
        Event(ts=hour_ago, ingested_at=hour_ago, consumer="alice", provider="fake-openai",
              output=100)
        for _ in range(90)
    ]  # fmt: skip
    strangers = [Event(ts=hour_ago, ingested_at=hour_ago, consumer=None) for _ in range(500)]
    add_events(db, *stored, *strangers)
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        {"alice": KEYS["alice"]},
        entitlements=[{"feature": "gpt-out", "limit": 10_000}],
    )
    return db, catalog


def test_a_store_of_the_period_is_read_whole_once_then_only_what_is_new(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory
) -> None:
    """9,000 of alice's 10,000 output tokens were stored an hour ago. The proxy reads
    them once, whole; its later reads sum only what was
    ingested since two minutes before the last one, and still count everything: 800 and
    800 more are admitted (the call that crosses is the last), the next is refused, and
    refused again once both calls are stored and read back."""
    db, catalog = full_store(tmp_path, fake_provider)
    proxy = start_proxy(
        catalog=catalog, options={"meter_db": str(db), "meter_governance_refresh": "0.2"}
    )
    assert wait_for_reads(proxy, 3)["whole"] == 1
    with openai_client(proxy, fake_provider, KEYS["alice"]) as client:
        chat(client, 800)
        chat(client, 800)  # 9,800 used before it: admitted, the last one
        with pytest.raises(openai.RateLimitError):
            chat(client, 800)
        before = reads(proxy)["recent_only"]
        wait_for_reads(proxy, before + 10)  # both calls stored and read since
        with pytest.raises(openai.RateLimitError):
            chat(client, 800)
    state = reads(proxy)
    assert state["whole"] == 1 and state["recent_only"] >= before + 10


def the_9000_still_count(
    proxy: MeterProxy, upstream: FakeProvider, match: str | None = None
) -> None:
    """800 and 800 more admitted (9,800 used before the second: the last), the next
    refused: the 9,000 tokens stored before count."""
    with openai_client(proxy, upstream, KEYS["alice"]) as client:
        chat(client, 800)
        chat(client, 800)
        with pytest.raises(openai.RateLimitError, match=match):
            chat(client, 800)


def test_a_catalog_reload_reads_only_the_counters_it_changed(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory
) -> None:
    """The catalog is edited while the proxy runs (the plan renamed: no counter changes):
    the read that follows keeps every sum, none is read whole again, and the 9,000
    tokens stored before still count: 800 and 800 more, then refused."""
    db, catalog = full_store(tmp_path, fake_provider)
    proxy = start_proxy(
        catalog=catalog, options={"meter_db": str(db), "meter_governance_refresh": "0.2"}
    )
    wait_for_reads(proxy, 3)
    edited = catalog.with_suffix(".new")
    edited.write_text(catalog.read_text().replace("name: Capped", "name: Capped plan"))
    edited.replace(catalog)  # atomically, as the docs recommend
    deadline = time.monotonic() + 30
    while reads(proxy).get("after_changes", 0) < 1:
        assert time.monotonic() < deadline, f"the reload was never read: {reads(proxy)}"
        time.sleep(0.05)
    the_9000_still_count(proxy, fake_provider)
    assert reads(proxy)["whole"] == 1


def test_a_restarted_proxy_takes_up_the_sums_it_kept(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory
) -> None:
    """The proxy saves its settled sums in the spool directory (0600); restarted, it
    reads only what was ingested since they were saved, never the whole store, and the
    9,000 tokens stored before still count: 800 and 800 more, then refused."""
    db, catalog = full_store(tmp_path, fake_provider)
    options = {"meter_db": str(db), "meter_governance_refresh": "0.2"}
    proxy = start_proxy(catalog=catalog, options=options)
    wait_for_reads(proxy, 3)
    sums = proxy.spool / SUMS_FILE
    assert sums.exists() and sums.stat().st_mode & 0o777 == 0o600
    assert str(db) not in sums.read_text()
    proxy.stop()
    (proxy.spool / "governance.json").unlink()  # the first run's figures
    again = proxy.again()
    again.start()
    try:
        assert wait_for_reads(again, 3)["whole"] == 0
        the_9000_still_count(again, fake_provider)
        assert reads(again)["whole"] == 0
    finally:
        again.stop()


def test_a_proxy_joining_a_fleet_takes_up_the_sums_another_saved(
    tmp_path: Path,
    fake_provider: FakeProvider,
    start_proxy: ProxyFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two proxies on a PostgreSQL lake: the first reads the 9,000 tokens whole and
    writes its settled sums for the fleet; the second, started with an empty spool, takes
    them up at its first read (no whole read) and still counts the 9,000: alone once the
    first has stopped, it admits 800 and 800 more, then refuses."""
    data = tmp_path / "lake-data"
    data.mkdir()
    monkeypatch.setenv("METERLINE_LAKE_DATA", str(data))  # this process's writes
    with postgres_server() as conninfo:
        locator, catalog = full_store(tmp_path, fake_provider, f"ducklake:postgres:{conninfo}")

        def proxy(name: str) -> MeterProxy:
            options = {
                "meter_db": str(locator),
                "meter_governance_refresh": "0.2",
                "meter_proxy_id": name,
            }
            env = {"METERLINE_LAKE_DATA": str(data)}
            return start_proxy(catalog=catalog, options=options, env=env, name=name)

        first = proxy("first")
        assert wait_for_reads(first, 3)["whole"] == 1
        joining = proxy("joining")
        state = wait_for_reads(joining, 3)
        assert state["whole"] == 0 and state["first_from_fleet"]
        first.stop()
        deadline = time.monotonic() + 30
        while fleet_state(joining).get("proxies") != 1:
            assert time.monotonic() < deadline, "the first proxy never left the fleet"
            time.sleep(0.05)
        the_9000_still_count(joining, fake_provider, match="reached")
        joining.stop()
