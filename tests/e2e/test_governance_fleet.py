"""Two real proxies on one DuckLake (PostgreSQL catalog) sharing one hard limit.

Each proxy counts its own calls at once and the other's from the lake, re-read every
``meter_governance_refresh`` seconds: the fleet's overshoot is bounded by what the other
proxy admits between its events reaching the lake and the next refresh.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import openai
import pytest
from click.testing import CliRunner

from billing.cli import main as billing_cli
from meterline.lakestage import staged_reads
from meterline.store import store
from tests.conftest import KEYS, ProxyFactory
from tests.e2e.test_governance import ALICE, chat
from tests.support.clients import openai_client
from tests.support.governance import governed_catalog
from tests.support.postgres import postgres_server
from tests.support.proxy import MeterProxy
from tests.support.upstream import FakeProvider

REFRESH = 0.3
PER_CALL = 20
ERIN = "sk-test-erin-000000000000000005"
"""A consumer of its own (the lake is shared by the tests of this module)."""
FRANK = "sk-test-frank-00000000000000006"


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A DuckLake locator and its data directory (fixed when the lake is created)."""
    data = tmp_path_factory.mktemp("lake-data")
    with postgres_server() as conninfo:
        yield f"ducklake:postgres:{conninfo}", data


def fleet(lake: tuple[str, Path], start_proxy: ProxyFactory, catalog: Path) -> list[MeterProxy]:
    locator, data = lake
    return [
        start_proxy(
            catalog=catalog,
            options={
                "meter_db": locator,
                "meter_proxy_id": name,
                "meter_governance_refresh": str(REFRESH),
            },
            env={"METERLINE_LAKE_DATA": str(data)},
            name=name,
        )
        for name in ("proxy-a", "proxy-b")
    ]


def lake_output(lake: tuple[str, Path], consumer: str = "alice") -> int:
    """Output tokens of ``consumer`` the lake holds (read with this process's connection;
    a lake that stages: with its staged lines, as billing reads it)."""
    with store(lake[0]) as con:
        tables = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
        if "usage_events" not in tables:
            return 0
        with staged_reads(con, lake[0]):
            row = con.execute(
                "SELECT coalesce(sum(output_tokens), 0) FROM usage_events WHERE consumer = ?",
                [consumer],
            ).fetchone()
    return int(row[0]) if row else 0


def wait_until_known(
    lake: tuple[str, Path], tokens: int, proxy: MeterProxy, consumer: str = "alice"
) -> None:
    """Until the lake holds ``tokens`` output tokens of ``consumer`` and ``proxy`` has read
    it since."""
    deadline = time.monotonic() + 60
    while lake_output(lake, consumer) < tokens:
        assert time.monotonic() < deadline, "events never reached the lake"
        time.sleep(0.1)
    seen = datetime.now(UTC)
    state = proxy.spool / "governance.json"
    while True:
        assert time.monotonic() < deadline, "the proxy never re-read the lake"
        try:
            at = json.loads(state.read_text())["snapshot_at"]
        except (OSError, ValueError, KeyError):
            at = None
        if at and datetime.fromisoformat(at) > seen:
            return
        time.sleep(0.1)


def snapshot_at(proxy: MeterProxy) -> str | None:
    try:
        return json.loads((proxy.spool / "governance.json").read_text()).get("snapshot_at")
    except (OSError, ValueError):
        return None


def chat_in_share(client: openai.OpenAI, proxy: MeterProxy, output: int) -> None:
    """A call that, refused because ``proxy`` took its share of the limit's rest until
    the fleet's next read (``meter_governance_share``), is sent again after that read,
    as an SDK does on a 429 with ``retry-after``."""
    for _ in range(20):
        try:
            return chat(client, output)
        except openai.RateLimitError as e:
            if "share of the rest" not in str(e):
                raise
        before, deadline = snapshot_at(proxy), time.monotonic() + 30
        while snapshot_at(proxy) == before:
            assert time.monotonic() < deadline, "the proxy never read the store again"
            time.sleep(0.05)
    raise AssertionError("refused for its share 20 times")


def test_two_proxies_share_one_limit(
    lake: tuple[str, Path],
    tmp_path: Path,
    start_proxy: ProxyFactory,
    fake_provider: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limit = 400
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        entitlements=[{"feature": "gpt-out", "limit": limit}],
    )
    monkeypatch.setenv("METERLINE_LAKE_DATA", str(lake[1]))  # for this process's reads
    a, b = fleet(lake, start_proxy, catalog)
    # One after the other: proxy A spends half, B learns it from the lake.
    with openai_client(a, fake_provider, KEYS["alice"]) as client:
        for _ in range(limit // PER_CALL // 2):
            chat_in_share(client, a, PER_CALL)
    wait_until_known(lake, limit // 2, b)
    with openai_client(b, fake_provider, KEYS["alice"]) as client:
        for _ in range(limit // PER_CALL // 2):
            chat_in_share(client, b, PER_CALL)
        with pytest.raises(openai.RateLimitError, match="reached"):
            chat_in_share(client, b, PER_CALL)
    wait_until_known(lake, limit, a)
    with (
        openai_client(a, fake_provider, KEYS["alice"]) as client,
        pytest.raises(openai.RateLimitError),
    ):  # A knows B's half
        chat(client, PER_CALL)


def test_fleet_overshoot_under_concurrent_traffic_is_bounded(
    lake: tuple[str, Path], tmp_path: Path, start_proxy: ProxyFactory, fake_provider: FakeProvider
) -> None:
    """Both proxies call as fast as they can until refused; the overshoot is measured."""
    limit = 600
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        {"bob": KEYS["bob"]},
        entitlements=[{"feature": "gpt-out", "limit": limit}],
    )
    proxies = fleet(lake, start_proxy, catalog)
    wait_for_each_other(proxies)  # a running fleet (a proxy just started knows no other)
    allowed = {p.options["meter_proxy_id"]: 0 for p in proxies}
    started = time.monotonic()

    def drive(proxy: MeterProxy) -> None:
        with openai_client(proxy, fake_provider, KEYS["bob"]) as client:
            for _ in range(limit // PER_CALL + 20):
                try:
                    chat_in_share(client, proxy, PER_CALL)
                except openai.RateLimitError:
                    return
                allowed[proxy.options["meter_proxy_id"]] += 1

    threads = [threading.Thread(target=drive, args=(p,)) for p in proxies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    elapsed = time.monotonic() - started
    used = sum(allowed.values()) * PER_CALL
    rate = sum(allowed.values()) / elapsed
    overshoot = used - limit
    print(
        f"fleet: {allowed} calls of {PER_CALL} tokens in {elapsed:.1f}s ({rate:.0f}/s), "
        f"used {used} of {limit}, overshoot {overshoot} tokens "
        f"(refresh {REFRESH}s, flush 0.1s)"
    )
    assert used >= limit  # the limit was used up before anything was refused
    # Bound: what one proxy admits while the other's calls are not in its view yet
    # (flush + refresh + a read), plus one reservation; generous for a loaded machine.
    stale_s = 0.1 + REFRESH + 5.0
    assert overshoot <= PER_CALL + rate * stale_s * PER_CALL


def test_a_burst_on_every_proxy_at_once_stays_near_the_cap(
    lake: tuple[str, Path], tmp_path: Path, start_proxy: ProxyFactory, fake_provider: FakeProvider
) -> None:
    """Both proxies know of each other, then both take calls as fast as they can, faster
    than a refresh: each admits its half of the rest (the call that crosses the last),
    so together they stop at the cap, not at twice it (each saw only its own calls and
    admitted all 200: 400 used)."""
    limit = 200
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        {"erin": ERIN},
        entitlements=[{"feature": "gpt-out", "limit": limit}],
    )
    proxies = pair(start_proxy, catalog, lake, ("proxy-e", "proxy-f"))
    allowed = {p.options["meter_proxy_id"]: 0 for p in proxies}
    refusals: list[str] = []

    def drive(proxy: MeterProxy) -> None:
        with openai_client(proxy, fake_provider, ERIN) as client:
            for _ in range(limit // PER_CALL):
                try:
                    chat(client, PER_CALL)
                except openai.RateLimitError as e:
                    refusals.append(str(e))
                    return
                allowed[proxy.options["meter_proxy_id"]] += 1

    threads = [threading.Thread(target=drive, args=(p,)) for p in proxies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    used = sum(allowed.values()) * PER_CALL
    print(f"burst: {allowed} calls of {PER_CALL} tokens: {used} used of {limit}")
    assert len(refusals) == 2 and all("share of the rest" in r for r in refusals)
    assert limit - 2 * PER_CALL <= used <= limit + 2 * PER_CALL


def test_a_lone_busy_proxy_takes_most_of_the_rest_from_its_second_round(
    tmp_path: Path, start_proxy: ProxyFactory, fake_provider: FakeProvider
) -> None:
    """Every call through one of two proxies: in the first round it takes half the rest
    (nobody had asked anything), then, the fleet having read what its calls asked, 9/10
    of each rest: the limit is used up after at most two refusals for its share. Split
    evenly it halved each rest instead: four refusals for 400 in calls of 20, each one a
    call the cap had room for. A lake of its own: the module's other tests leave rows
    (calls in flight of proxies they stopped) on the same counter until they expire."""
    limit = 400
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        {"frank": FRANK},
        entitlements=[{"feature": "gpt-out", "limit": limit}],
    )
    data = tmp_path / "lake-data"
    data.mkdir()
    with postgres_server() as conninfo:
        lake = (f"ducklake:postgres:{conninfo}", data)
        proxies = pair(start_proxy, catalog, lake, ("proxy-g", "proxy-h"))
        admitted, for_share = busy_until_refused(proxies[0], fake_provider, limit)
        for p in proxies:
            p.stop()
    print(f"one busy proxy of two: {admitted} calls admitted, {for_share} refused for its share")
    assert limit <= admitted * PER_CALL <= limit + PER_CALL
    assert for_share <= 2


def busy_until_refused(busy: MeterProxy, upstream: FakeProvider, limit: int) -> tuple[int, int]:
    """Calls through ``busy`` until the limit refuses one: (admitted, refused for the
    proxy's share), each of the latter sent again after the proxy's next read."""
    admitted, for_share = 0, 0
    with openai_client(busy, upstream, FRANK) as client:
        for _ in range(2 * limit // PER_CALL):
            try:
                chat(client, PER_CALL)
            except openai.RateLimitError as e:
                if "share of the rest" not in str(e):
                    assert "reached" in str(e)
                    break
                for_share += 1
                before, deadline = snapshot_at(busy), time.monotonic() + 30
                while snapshot_at(busy) == before:  # the next round, as an SDK retries
                    assert time.monotonic() < deadline, "the proxy never read again"
                    time.sleep(0.05)
                continue
            admitted += 1
    return admitted, for_share


def pair(
    start_proxy: ProxyFactory, catalog: Path, lake: tuple[str, Path], names: tuple[str, str]
) -> list[MeterProxy]:
    """Two proxies on ``lake`` reading it every 2 s (the default), once each has read the
    other running."""
    locator, data = lake
    proxies = [
        start_proxy(
            catalog=catalog,
            options={
                "meter_db": locator,
                "meter_proxy_id": name,
                "meter_governance_refresh": "2",
            },
            env={"METERLINE_LAKE_DATA": str(data)},
            name=name,
        )
        for name in names
    ]
    wait_for_each_other(proxies)
    return proxies


def wait_for_each_other(proxies: list[MeterProxy]) -> None:
    """Until every proxy has read the others running (``governance.json``)."""
    deadline = time.monotonic() + 30
    while any(fleet_state(p).get("proxies") != len(proxies) for p in proxies):
        assert time.monotonic() < deadline, "the proxies never read each other"
        time.sleep(0.05)


def fleet_state(proxy: MeterProxy) -> dict[str, dict[str, int]]:
    """What ``proxy`` last read of the fleet's other proxies (``governance.json``)."""
    try:
        state = json.loads((proxy.spool / "governance.json").read_text())
    except (OSError, ValueError):
        return {}
    return state.get("fleet") or {}


def wait_for_fleet(proxy: MeterProxy, kind: str, units: int, timeout: float = 30.0) -> None:
    """Until ``proxy`` has read the other proxies holding ``units`` of ``kind`` on one counter."""
    deadline = time.monotonic() + timeout
    while max(fleet_state(proxy).get(kind, {}).values(), default=0) < units:
        name = proxy.options["meter_proxy_id"]
        assert time.monotonic() < deadline, f"{name} never read {units} {kind}"
        time.sleep(0.05)


def test_a_call_in_flight_on_one_proxy_holds_the_limit_on_the_other(
    lake: tuple[str, Path], tmp_path: Path, start_proxy: ProxyFactory, fake_provider: FakeProvider
) -> None:
    """A's call reserves the whole limit while it runs: B refuses (retry) until it ends,
    then counts what it used once. Before, B admitted: it saw A's calls only once
    stored, so a fleet of long calls overshot by every call in flight (1,010,000 tokens
    on a 500,000 cap with 15 s calls)."""
    limit = 400
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        {"carol": KEYS["carol"]},
        entitlements=[{"feature": "gpt-out", "limit": limit}],
    )
    a, b = fleet(lake, start_proxy, catalog)
    with openai_client(a, fake_provider, KEYS["carol"]) as client:
        chat(client, PER_CALL)  # the lake has events (billing refuses a store with none)
        wait_until_known(lake, PER_CALL, b, "carol")
        long_call = threading.Thread(
            target=chat, args=(client, PER_CALL), kwargs={"max_tokens": limit, "think": 6}
        )
        long_call.start()
        wait_for_fleet(b, "reserved", limit)
        # `billing entitlements` on the lake shows it too, with no --proxy-state.
        report = CliRunner().invoke(
            billing_cli,
            ["--db", lake[0], "--catalog", str(catalog), "entitlements", "--format", "json"],
            env={"METERLINE_LAKE_DATA": str(lake[1])},
        )
        assert report.exit_code == 0, report.output
        (row,) = (r for r in json.loads(report.output) if r["feature"] == "gpt-out")
        assert row["reserved"] >= limit
        with openai_client(b, fake_provider, KEYS["carol"]) as other:
            with pytest.raises(openai.RateLimitError, match="held by calls in flight"):
                chat(other, PER_CALL)
            long_call.join(timeout=30)
            assert not long_call.is_alive()
            wait_until_known(lake, 2 * PER_CALL, b, "carol")
            chat(other, PER_CALL)  # A's call settled at what it used: B admits again
    wait_until_known(lake, 3 * PER_CALL, a, "carol")
    assert lake_output(lake, "carol") == 3 * PER_CALL


def test_events_not_flushed_yet_count_on_the_other_proxy_once(
    lake: tuple[str, Path], tmp_path: Path, start_proxy: ProxyFactory, fake_provider: FakeProvider
) -> None:
    """A meters the whole limit and keeps it in its spool (a long flush interval): B
    refuses from A's published events alone. Once A stops (its events flushed, its rows
    still live for their time), B counts them once, from the lake: "400 used", not 800."""
    limit = 400
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        {"dave": KEYS["dave"]},
        entitlements=[{"feature": "gpt-out", "limit": limit}],
    )
    locator, data = lake
    a, b = (
        start_proxy(
            catalog=catalog,
            options={
                "meter_db": locator,
                "meter_proxy_id": name,
                "meter_governance_refresh": str(REFRESH),
                "meter_flush_interval": interval,
            },
            env={"METERLINE_LAKE_DATA": str(data)},
            name=name,
        )
        for name, interval in (("proxy-c", "3600"), ("proxy-d", "0.1"))
    )
    with openai_client(a, fake_provider, KEYS["dave"]) as client:
        for _ in range(limit // PER_CALL):
            chat_in_share(client, a, PER_CALL)
    wait_for_fleet(b, "used", limit)
    assert fleet_state(b)["used"] == {next(iter(fleet_state(b)["used"])): limit}
    assert lake_output(lake, "dave") == 0  # still in A's spool
    with (
        openai_client(b, fake_provider, KEYS["dave"]) as client,
        pytest.raises(openai.RateLimitError, match=rf"reached \({limit} used\)"),
    ):
        chat(client, PER_CALL)
    assert a.stop() == 0  # flushes its spool; its rows stay until they expire
    wait_until_known(lake, limit, b, "dave")
    assert fleet_state(b)["used"] == {}  # A's events are in B's snapshot: not counted again
    with (
        openai_client(b, fake_provider, KEYS["dave"]) as client,
        pytest.raises(openai.RateLimitError, match=rf"reached \({limit} used\)"),
    ):
        chat(client, PER_CALL)
