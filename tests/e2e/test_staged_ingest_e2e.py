"""Staged ingest end to end: real proxies stage, billing reads the staged lines, a move
changes nothing billing shows.

Two ``mitmdump -s addons/meter.py`` with ``METERLINE_LAKE_INGEST=staged`` on one lake
(a real PostgreSQL catalog), the official SDKs through them. Before any move every event
is only in the staging table, and ``billing usage`` and ``invoice generate`` already
count each once; after the move the lake's own table holds them and both commands give
the same figures. A proxy with a short ``METERLINE_LAKE_MOVE_EVERY`` moves by itself.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from meterline import lakestage
from meterline.lakestage import staged_reads
from meterline.store import store
from tests.conftest import KEYS, ProxyFactory
from tests.e2e.test_billing_e2e import billing, billing_catalog, money, usage
from tests.e2e.test_governance import ALICE, chat
from tests.e2e.test_governance_fleet import PER_CALL, chat_in_share, wait_until_known
from tests.support.clients import Clients, openai_client
from tests.support.governance import governed_catalog
from tests.support.postgres import create_database, postgres_server
from tests.support.proxy import MeterProxy
from tests.support.upstream import Exchange, FakeProvider


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with postgres_server() as conninfo:
        yield conninfo


def _staged_lake(
    server: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, move_every: str
) -> tuple[str, dict[str, str]]:
    """A new lake that stages, and the environment of its proxies (set for this process's
    reads and billing's too). ``move_every``: 3600 for no move by the proxies."""
    env = {
        "METERLINE_LAKE_DATA": str(tmp_path / "lake-data"),
        "METERLINE_LAKE_INGEST": "staged",
        "METERLINE_LAKE_MOVE_EVERY": move_every,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return "ducklake:postgres:" + create_database(server, name), env


def _request_ids(locator: str, table: str) -> Counter[str]:
    """request_id -> events, of the lake's own table (``lake.main.usage_events``) or of
    what readers see (``usage_events``: staged lines included)."""
    with store(locator) as con:
        if not con.execute("SELECT count(*) FROM (SHOW TABLES)").fetchone()[0]:  # type: ignore[index]
            return Counter()  # no proxy has flushed yet
        with staged_reads(con, locator):
            rows = con.execute(f"SELECT request_id FROM {table}").fetchall()
    return Counter(r[0] for r in rows)


def _wait_for(locator: str, table: str, wanted: set[str]) -> Counter[str]:
    deadline = time.monotonic() + 30
    while True:
        seen = _request_ids(locator, table)
        if wanted <= set(seen) or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def _calls(proxy: MeterProxy, fake: FakeProvider) -> list[Exchange]:
    """Four calls through ``proxy``: two by the OpenAI SDK, two by Anthropic's."""
    exchanges: list[Exchange] = []
    made = Clients(proxy, fake)
    try:
        gpt = made.openai(KEYS["alice"])
        claude = made.anthropic(KEYS["bob"])
        for _ in range(2):
            gpt.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
            )
            exchanges.append(fake.last())
            claude.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=64,
                messages=[{"role": "user", "content": "hi"}],
            )
            exchanges.append(fake.last())
    finally:
        made.close()
    return exchanges


def test_staged_events_are_billed_once_before_and_after_the_move(
    server: str,
    tmp_path: Path,
    start_proxy: ProxyFactory,
    fake_provider: FakeProvider,
    test_catalog: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lake, env = _staged_lake(server, "staged_e2e", tmp_path, monkeypatch, move_every="3600")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    proxies = [
        start_proxy(options={"meter_db": lake, "meter_proxy_id": name}, env=env, name=name)
        for name in ("stage-a", "stage-b")
    ]
    exchanges = [ex for proxy in proxies for ex in _calls(proxy, fake_provider)]
    wanted = {ex.request_id for ex in exchanges}
    assert len(wanted) == 8

    seen = _wait_for(lake, "usage_events", wanted)
    assert {i: seen[i] for i in wanted} == dict.fromkeys(wanted, 1)
    assert not wanted & set(_request_ids(lake, "lake.main.usage_events"))  # staged only

    end = datetime.now(UTC) + timedelta(seconds=1)
    while datetime.now(UTC) < end:
        time.sleep(0.05)
    catalog = billing_catalog(test_catalog, tmp_path / "billing.yaml", start, end)
    window = ("--from", start.isoformat(), "--to", end.isoformat())
    usage_before = billing(lake, catalog, "usage", "--customer", "acme", *window)
    out = billing(lake, catalog, "invoice", "generate", "--period", f"{end:%Y-%m}", "--settle", "0")
    [invoice] = out["invoices"]
    lines = {ln["rate_card"]: Decimal(ln["amount"]) for ln in invoice["lines"]}
    gpt = [ex for ex in exchanges if ex.path.endswith("/chat/completions")]
    assert lines["gpt-in"] == money(
        Decimal(usage(gpt, "input", "cached_input")) * Decimal("2.50") / 1000
    )

    with store(lake) as con, closing(lakestage.connect(lake)) as pg:
        work = tmp_path / "move"
        work.mkdir(mode=0o700)
        assert lakestage.move(con, pg, work) >= len(wanted)
    moved = _request_ids(lake, "lake.main.usage_events")
    assert {i: moved[i] for i in wanted} == dict.fromkeys(wanted, 1)
    seen = _request_ids(lake, "usage_events")
    assert {i: seen[i] for i in wanted} == dict.fromkeys(wanted, 1)

    assert billing(lake, catalog, "usage", "--customer", "acme", *window) == usage_before
    again = billing(
        lake, catalog, "invoice", "generate", "--period", f"{end:%Y-%m}", "--settle", "0"
    )
    assert again["created"] == [] and again["invoices"] == out["invoices"]


def test_a_staging_proxy_moves_its_events_into_the_lake(
    server: str,
    tmp_path: Path,
    start_proxy: ProxyFactory,
    fake_provider: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lake, env = _staged_lake(server, "staged_mover", tmp_path, monkeypatch, move_every="0.5")
    proxy = start_proxy(options={"meter_db": lake, "meter_proxy_id": "mover"}, env=env)
    exchanges = _calls(proxy, fake_provider)
    wanted = {ex.request_id for ex in exchanges}
    moved = _wait_for(lake, "lake.main.usage_events", wanted)
    assert {i: moved[i] for i in wanted} == dict.fromkeys(wanted, 1)
    seen = _request_ids(lake, "usage_events")
    assert {i: seen[i] for i in wanted} == dict.fromkeys(wanted, 1)


def test_two_staging_proxies_share_one_limit(
    server: str,
    tmp_path: Path,
    start_proxy: ProxyFactory,
    fake_provider: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Governance on a lake that stages: each proxy learns the other's calls from the
    staged lines (no move in the test), and the limit holds for the fleet."""
    limit = 400
    lake, env = _staged_lake(server, "staged_limit", tmp_path, monkeypatch, move_every="3600")
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        entitlements=[{"feature": "gpt-out", "limit": limit}],
    )
    a, b = (
        start_proxy(
            catalog=catalog,
            options={"meter_db": lake, "meter_proxy_id": name, "meter_governance_refresh": "0.3"},
            env=env,
            name=name,
        )
        for name in ("limit-a", "limit-b")
    )
    with openai_client(a, fake_provider, KEYS["alice"]) as client:
        for _ in range(limit // PER_CALL // 2):
            chat_in_share(client, a, PER_CALL)
    wait_until_known((lake, tmp_path / "lake-data"), limit // 2, b)
    with openai_client(b, fake_provider, KEYS["alice"]) as client:
        for _ in range(limit // PER_CALL // 2):
            chat_in_share(client, b, PER_CALL)
        with pytest.raises(openai.RateLimitError, match="reached"):
            chat_in_share(client, b, PER_CALL)
    wait_until_known((lake, tmp_path / "lake-data"), limit, a)
    with (
        openai_client(a, fake_provider, KEYS["alice"]) as client,
        pytest.raises(openai.RateLimitError),
    ):  # A knows B's half
        chat(client, PER_CALL)
    # Both leave, and what they shared (calls in flight, events they had not seen
    # stored, settled sums) is dropped, as if it had expired: a proxy joining now must
    # learn that the limit is reached from the events alone, which are only staged
    # (nothing was moved into the lake's table).
    for proxy in (a, b):
        assert proxy.stop() == 0
    assert _request_ids(lake, "lake.main.usage_events") == Counter()
    with closing(lakestage.connect(lake)) as pg:
        for table in ("meterline_fleet_live", "meterline_fleet_sums"):
            pg.execute(f"DELETE FROM {table}")
    c = start_proxy(
        catalog=catalog,
        options={"meter_db": lake, "meter_proxy_id": "limit-c", "meter_governance_refresh": "0.3"},
        env=env,
        name="limit-c",
    )
    with (
        openai_client(c, fake_provider, KEYS["alice"]) as client,
        pytest.raises(openai.RateLimitError, match="reached"),
    ):
        chat(client, PER_CALL)
