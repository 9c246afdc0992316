"""A fleet's proxies share their calls in flight and unflushed events (a real PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

from addons.metering.governance import Governance
from billing.cli import main as billing_cli
from meterline.entitlements import (
    Counters,
    Refusal,
    Reservation,
    Snapshot,
    build_policy,
    fleet,
    fleetsums,
    read_snapshot,
)
from meterline.entitlements.policy import Key
from meterline.lakerepair import metadata_alias
from meterline.store import open_store
from tests.billing.events import Event, add_events, write
from tests.e2e.test_governance_alerts import PLAN
from tests.meterline.entitlements.test_counters import NOW, catalog, policy_of
from tests.support.postgres import postgres_server

MD = metadata_alias()
START = datetime(2026, 3, 1, tzinfo=UTC)
ODD = "o'brien); DROP TABLE x; --"
"""A customer name SQL must quote (names come from the catalog)."""


def key(customer: str = "acme", feature: str = "out") -> Key:
    return (customer, feature, "P1M", datetime(2026, 1, 31, tzinfo=UTC), START)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The lake's PostgreSQL conninfo (superuser), its data path in the environment."""
    data: Path = tmp_path_factory.mktemp("fleet-lake")
    with postgres_server() as conninfo, pytest.MonkeyPatch.context() as mp:
        mp.setenv("METERLINE_LAKE_DATA", str(data))
        yield conninfo


@pytest.fixture(scope="module")
def con(server: str) -> Iterator[duckdb.DuckDBPyConnection]:
    lake = open_store(f"ducklake:postgres:{server}", wait_s=5)
    assert fleet.is_shared(lake, MD)
    assert fleet.read_rows(lake, MD, "nobody") == []  # no table yet: nothing held
    fleet.create_table(lake, MD)
    yield lake
    lake.close()


def leave(con: duckdb.DuckDBPyConnection, publisher: str) -> None:
    """Drop ``publisher``'s rows (a test's proxy gone), so later tests read only theirs."""
    script = f"DELETE FROM {fleet.TABLE} WHERE publisher = ''{publisher}''"
    con.execute(f"CALL postgres_execute('{MD}', '{script}', use_transaction = false)")


def held_rows(rows: list[fleet.Row]) -> list[fleet.Row]:
    """The rows that hold units (not the ``alive`` ones)."""
    return [r for r in rows if r[0] != "alive"]


def as_role(con: duckdb.DuckDBPyConnection, server: str, role: str, grants: str) -> str:
    """A lake locator for a new login ``role`` with the DuckLake tables' privileges and
    ``grants`` (SQL run as the superuser after them)."""
    script = (
        f"CREATE ROLE {role} LOGIN; "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}; "
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}; {grants}"
    )
    con.execute(f"CALL postgres_execute('{MD}', '{script}', use_transaction = false)")
    return "ducklake:postgres:" + server.replace("user=postgres", f"user={role}")


def test_what_one_proxy_holds_is_read_by_the_others_only(con: duckdb.DuckDBPyConnection) -> None:
    held = fleet.Held(
        reserved={key(): 400, key(ODD): 7},
        in_flight={("acme", "out"): 400},
        pending={"e1": [(key(), 20)], "e2": [(key(), 30), (key(ODD, "all"), 5)]},
    )
    fleet.publish(con, MD, "a:1:x", held, 10)
    assert fleet.read_rows(con, MD, "a:1:x") == []  # its own rows are not the fleet's
    rows = fleet.read_rows(con, MD, "b:2:y")
    peers = fleet.peers_from(rows, stored_ids={"e1"})  # the reader's snapshot holds e1
    assert peers.reserved == {key(): 400, key(ODD): 7}
    assert peers.in_flight == {("acme", "out"): 400}
    assert peers.used == {key(): 30, key(ODD, "all"): 5}
    assert sorted(fleet.pending_ids(rows)) == ["e1", "e2"]
    # The next write replaces the last one: a call ended, its event pending.
    fleet.publish(con, MD, "a:1:x", fleet.Held(pending={"e3": [(key(), 9)]}), 10)
    peers = fleet.peers_from(fleet.read_rows(con, MD, "b:2:y"), set())
    assert (peers.reserved, peers.in_flight, peers.used) == ({}, {}, {key(): 9})
    leave(con, "a:1:x")


def test_expired_rows_and_events_named_twice_count_once_or_not_at_all(
    con: duckdb.DuckDBPyConnection,
) -> None:
    fleet.publish(con, MD, "gone:1:x", fleet.Held(reserved={key(): 1000}), -1)  # expired
    # A proxy restarted within its old rows' life names its spooled events again.
    fleet.publish(con, MD, "p:1:old", fleet.Held(pending={"e9": [(key(), 40)]}), 10)
    fleet.publish(con, MD, "p:2:new", fleet.Held(pending={"e9": [(key(), 40)]}), 10)
    peers = fleet.peers_from(fleet.read_rows(con, MD, "reader"), set())
    assert peers.reserved == {} and peers.used == {key(): 40}
    for who in ("p:1:old", "p:2:new"):
        leave(con, who)


def test_pending_events_past_the_row_bound_are_summed_and_counted(
    con: duckdb.DuckDBPyConnection,
) -> None:
    pending = {f"e{n}": [(key(), 10)] for n in range(5)}
    fleet.publish(con, MD, "big:1:x", fleet.Held(pending=pending), 10, max_pending=2)
    rows = fleet.read_rows(con, MD, "reader")
    assert len(held_rows(rows)) == 3 and sorted(fleet.pending_ids(rows)) == ["e0", "e1"]
    # e0 is stored: counted there. The three past the bound have no id: counted here.
    assert fleet.peers_from(rows, {"e0"}).used == {key(): 40}
    leave(con, "big:1:x")


def test_the_other_proxies_figures_count_against_a_limit() -> None:
    pol = policy_of(catalog(entitlements=[{"feature": "out", "limit": 100}]))
    counter = pol.limits[0].account.current(NOW)[1]
    c = Counters()
    c.apply(Snapshot({counter: 30}, set(), {}, NOW, peers=fleet.Peers(used={counter: 30})))
    assert c.used(counter) == 60
    admitted = c.admit(pol, "openai", "gpt-4o", 0, 40, NOW)  # 60 + 40: the last one
    assert isinstance(admitted, Reservation)
    c.release(admitted)
    # Another proxy holds the remaining 40 for a call in flight: refused, retry.
    cf = counter[:2]
    peers = fleet.Peers(used={counter: 30}, reserved={counter: 40}, in_flight={cf: 40})
    c.apply(Snapshot({counter: 30}, set(), {}, NOW, peers=peers))
    refused = c.admit(pol, "openai", "gpt-4o", 0, 10, NOW)
    assert isinstance(refused, Refusal) and refused.retry
    assert "60 used" in refused.message
    # It ended using 10: stored now, held no more.
    c.apply(Snapshot({counter: 70}, set(), {}, NOW))
    assert c.used(counter) == 70
    assert isinstance(c.admit(pol, "openai", "gpt-4o", 0, 10, NOW), Reservation)


def test_every_running_proxy_is_counted_holding_something_or_not(
    con: duckdb.DuckDBPyConnection,
) -> None:
    fleet.publish(con, MD, "idle:1:x", fleet.Held(), 10)
    fleet.publish(con, MD, "busy:1:x", fleet.Held(reserved={key(): 5}), 10)
    fleet.publish(con, MD, "gone:1:x", fleet.Held(), -1)  # expired: stopped
    assert fleet.peers_from(fleet.read_rows(con, MD, "reader"), set()).alive == 2
    assert fleet.peers_from(fleet.read_rows(con, MD, "idle:1:x"), set()).alive == 1
    for who in ("idle:1:x", "busy:1:x", "gone:1:x"):
        leave(con, who)


def test_each_proxy_admits_its_share_of_what_a_limit_has_left() -> None:
    """Three proxies, 300 left of a limit: between two snapshots one proxy admits until
    its own calls reach a third of it (the call that crosses is the last); alone, it may
    take it all. Before, each of them could admit all 300 (3.0x the cap in a burst)."""
    pol = policy_of(catalog(entitlements=[{"feature": "out", "limit": 300}]))
    counter = pol.limits[0].account.current(NOW)[1]
    c = Counters()
    c.apply(Snapshot({counter: 0}, set(), {}, NOW, peers=fleet.Peers(alive=2)))
    assert c.fleet_size == 3
    first = c.admit(pol, "openai", "gpt-4o", 0, 60, NOW)
    second = c.admit(pol, "openai", "gpt-4o", 0, 60, NOW)  # 60 < 100: admitted, crosses
    refused = c.admit(pol, "openai", "gpt-4o", 0, 60, NOW)  # 120 taken: its share
    assert isinstance(first, Reservation) and isinstance(second, Reservation)
    assert isinstance(refused, Refusal) and refused.retry
    assert refused.reason == "limit:out" and "3 proxies" in refused.message
    # The next snapshot: 120 of this proxy's in flight, 300 - 120 = 180 left, a new share.
    c.apply(Snapshot({counter: 0}, set(), {}, NOW, peers=fleet.Peers(alive=2)))
    assert isinstance(c.admit(pol, "openai", "gpt-4o", 0, 60, NOW), Reservation)
    # Alone (the others stopped): the whole rest.
    alone = Counters()
    alone.apply(Snapshot({counter: 0}, set(), {}, NOW))
    calls = [alone.admit(pol, "openai", "gpt-4o", 0, 60, NOW) for _ in range(5)]
    assert all(isinstance(call, Reservation) for call in calls)
    assert isinstance(alone.admit(pol, "openai", "gpt-4o", 0, 60, NOW), Refusal)


def test_a_restarted_proxy_does_not_count_its_own_spooled_events_twice(
    con: duckdb.DuckDBPyConnection,
) -> None:
    """Killed and restarted, a proxy counts its spool's events as its own pending again,
    while its old rows (another publisher) still name them until they expire. Before,
    it counted them twice: 3,000 used for 1,500 (a probe with kill -9)."""
    policy = build_policy(catalog(entitlements=[{"feature": "out", "limit": 100}]), NOW)
    fleet.publish(con, MD, "a:1:old", fleet.Held(pending={"e1": [(key(), 40)]}), 10)

    def snapshot(own: list[str]) -> Snapshot:
        return read_snapshot(
            con, policy, NOW, lambda: own, lambda c: fleet.read_rows(c, MD, "a:2:new")
        )

    assert snapshot(["e1"]).peers.used == {}
    assert snapshot([]).peers.used == {key(): 40}  # another proxy's: counted
    leave(con, "a:1:old")


def test_a_role_granted_the_table_shares_without_the_right_to_create_it(
    con: duckdb.DuckDBPyConnection, server: str
) -> None:
    """An administrator creates the table and grants it; the proxies' role may not create
    tables (PostgreSQL 15's default on schema public). Before, every start ran the DDL,
    which PostgreSQL refused before its IF NOT EXISTS: no sharing at all."""
    locator = as_role(con, server, "fleet_dml", "")
    role = open_store(locator, wait_s=5)
    try:
        fleet.create_table(role, MD)
        fleet.publish(role, MD, "r:1:x", fleet.Held(reserved={key(): 5}), 10)
        assert fleet.peers_from(fleet.read_rows(con, MD, "other"), set()).reserved == {key(): 5}
        fleet.publish(role, MD, "r:1:x", fleet.Held(), 10)
    finally:
        role.close()


def test_a_proxy_id_with_a_backslash_and_a_quote_under_old_string_rules(
    con: duckdb.DuckDBPyConnection, server: str
) -> None:
    """With ``standard_conforming_strings=off`` a backslash escapes in a plain literal:
    a proxy id ``o\\'brien`` broke the publish and the read (a syntax error at every
    refresh)."""
    script = "ALTER DATABASE postgres SET standard_conforming_strings = off"
    con.execute(f"CALL postgres_execute('{MD}', '{script}', use_transaction = false)")
    fresh = open_store(f"ducklake:postgres:{server}", wait_s=5)  # a session taking it
    try:
        show = "SELECT current_setting(''standard_conforming_strings'')"
        setting = f"SELECT * FROM postgres_query('{MD}', '{show}')"
        assert fresh.execute(setting).fetchone() == ("off",)
        who = "o\\'brien:1:x"
        fleet.publish(fresh, MD, who, fleet.Held(reserved={key(): 3}), 10)
        peers = fleet.peers_from(fleet.read_rows(fresh, MD, "reader"), set())
        assert peers.reserved == {key(): 3}
        assert held_rows(fleet.read_rows(fresh, MD, who)) == []  # its own rows, named exactly
        fleet.publish(fresh, MD, who, fleet.Held(), 10)
    finally:
        fresh.close()
        script = "ALTER DATABASE postgres RESET standard_conforming_strings"
        con.execute(f"CALL postgres_execute('{MD}', '{script}', use_transaction = false)")


def test_a_role_that_cannot_read_the_table_keeps_its_reads_and_reports(
    con: duckdb.DuckDBPyConnection, server: str, tmp_path: Path
) -> None:
    """A reporting role given the lake's tables before the proxies made theirs. Before,
    ``billing entitlements`` ended in a traceback, and a proxy's every lake read failed
    with the table's read (limits on stale figures)."""
    superuser = f"ducklake:postgres:{server}"
    add_events(superuser, Event(datetime.now(UTC) - timedelta(seconds=5), output=10))
    locator = as_role(con, server, "fleet_none", f"REVOKE ALL ON {fleet.TABLE} FROM fleet_none")
    catalog = write(tmp_path / "catalog.yaml", PLAN.format(port=9))
    report = CliRunner().invoke(
        billing_cli, ["--db", locator, "--catalog", str(catalog), "entitlements"]
    )
    assert report.exit_code == 0, report.output
    assert report.stderr == (
        f"warning: cannot read the fleet's calls in flight ({fleet.TABLE}: permission denied "
        f"for table {fleet.TABLE}); RESERVED leaves them out\n"
    )
    gov = Governance()
    role = open_store(locator, wait_s=5)
    try:
        role.execute("BEGIN TRANSACTION")
        assert gov.reads._peer_rows(role) == []  # noqa: SLF001 - the read's own step
        assert role.execute("SELECT count(*) FROM usage_events").fetchone() == (1,)
        role.execute("ROLLBACK")
    finally:
        role.close()


def test_the_fleet_writes_and_reads_in_rounds() -> None:
    """Every proxy writes at the multiples of the refresh (epoch seconds), wherever its
    last read ended, and reads ROUND_READ_DELAY_S into the round (a quarter of a short
    refresh), once the others' writes of that round are in: all take their share of the
    same rest (bench/fleet_caps.py: bursts across refreshes went 1.13-1.23x past a cap
    with three proxies, 1.10x in rounds)."""
    assert fleet.until_round(1_000_000.0, 2.0) == 2.0
    assert fleet.until_round(1_000_001.5, 2.0) == pytest.approx(0.5)
    assert fleet.until_round(1_000_000.25, 0.5) == pytest.approx(0.25)
    assert fleet.read_delay(1_000_000.05, 2.0) == pytest.approx(fleet.ROUND_READ_DELAY_S - 0.05)
    assert fleet.read_delay(1_000_000.5, 2.0) == 0.0  # a read out of turn (a catalog change)
    assert fleet.read_delay(1_000_000.02, 0.4) == pytest.approx(0.08)  # a quarter of it


def test_shares_follow_demand_and_add_up_to_the_rest() -> None:
    """Each proxy's share: a fifth of the rest split evenly, the remainder by what its
    calls asked in the round before; every proxy computes it from the same written
    figures, so the shares add up to the whole rest (the fleet's bound stays one rest)."""
    demands = [900, 100, 0]
    shares = [
        fleet.share_of(own, sum(demands) - own, len(demands), fleet.EVEN_PART) for own in demands
    ]
    assert shares == [
        Fraction(1, 15) + Fraction(4, 5) * Fraction(9, 10),
        Fraction(11, 75),
        Fraction(1, 15),
    ]
    assert sum(shares) == 1
    assert fleet.share_of(0, 0, 3, fleet.EVEN_PART) == Fraction(1, 3)  # nobody asked: even
    assert fleet.share_of(900, 100, 3, Fraction(1)) == Fraction(1, 3)  # 'even'
    assert fleet.share_of(500, 0, 3, fleet.EVEN_PART) == Fraction(13, 15)  # alone busy


def test_a_lone_busy_proxy_takes_most_of_the_rest() -> None:
    """Three proxies, 300 left, only this one's calls asked in the round before: it admits
    calls of 20 until its own reach 13/15 of the rest (260: 13 calls) where an even split
    stopped it at a third (100: 5 calls), refusing calls the cap had room for. Its refused
    calls count as demand too, and the demand it writes is what weighs its share once the
    round's snapshot is applied."""
    pol = policy_of(catalog(entitlements=[{"feature": "out", "limit": 1000}]))
    counter = pol.limits[0].account.current(NOW)[1]
    stored = {counter: 700}

    def proxy(even_part: Fraction) -> Counters:
        c = Counters(share_even_part=even_part)
        c.apply(Snapshot(dict(stored), set(), {}, NOW, peers=fleet.Peers(alive=2)))
        # One round of calls asked 300 of this counter (none by the others): written.
        c.demand[counter] = 300
        assert c.to_write().demand == {counter: 300} and c.demand == {}
        c.apply(Snapshot(dict(stored), set(), {}, NOW, peers=fleet.Peers(alive=2)))
        return c

    for c, admitted in ((proxy(fleet.EVEN_PART), 13), (proxy(Fraction(1)), 5)):
        calls = [c.admit(pol, "openai", "gpt-4o", 0, 20, NOW) for _ in range(admitted + 1)]
        assert [isinstance(r, Reservation) for r in calls] == [True] * admitted + [False]
        refused = calls[-1]
        assert isinstance(refused, Refusal) and "share of the rest" in refused.message
        # What the calls asked, admitted or refused, is the next round's demand.
        assert c.to_write().demand == {counter: (admitted + 1) * 20}


def test_a_proxy_whose_calls_start_gets_its_even_part_then_what_it_asks() -> None:
    """The other two proxies asked 600 in the round before, this one nothing: it may take
    a fifteenth of the 300 left (its first call of the round is admitted all the same);
    in the next round its refused calls weigh its share."""
    pol = policy_of(catalog(entitlements=[{"feature": "out", "limit": 1000}]))
    counter = pol.limits[0].account.current(NOW)[1]
    peers = fleet.Peers(alive=2, demand={counter: 600})
    c = Counters()
    c.apply(Snapshot({counter: 700}, set(), {}, NOW, peers=peers))
    calls = [c.admit(pol, "openai", "gpt-4o", 0, 10, NOW) for _ in range(4)]
    assert [isinstance(r, Reservation) for r in calls] == [True, True, False, False]
    for r in calls[:2]:
        assert isinstance(r, Reservation)
        c.release(r)
    assert c.to_write().demand == {counter: 40}  # asked 40: share 1/15 + 4/5 * 40/640 = 7/60
    c.apply(Snapshot({counter: 720}, set(), {}, NOW, peers=peers))
    calls = [c.admit(pol, "openai", "gpt-4o", 0, 10, NOW) for _ in range(4)]
    assert [isinstance(r, Reservation) for r in calls] == [True, True, True, True]


def test_demand_is_written_and_read_by_the_others(con: duckdb.DuckDBPyConnection) -> None:
    fleet.publish(con, MD, "a:1:x", fleet.Held(demand={key(): 250}), 10)
    fleet.publish(con, MD, "b:1:x", fleet.Held(demand={key(): 50, key("beta"): 7}), 10)
    peers = fleet.peers_from(fleet.read_rows(con, MD, "reader"), set())
    assert peers.demand == {key(): 300, key("beta"): 7}
    assert peers.used == {} and peers.reserved == {}  # demand holds nothing
    assert fleet.peers_from(fleet.read_rows(con, MD, "a:1:x"), set()).demand[key()] == 50
    for who in ("a:1:x", "b:1:x"):
        leave(con, who)


def test_a_share_counts_the_calls_admitted_after_the_proxy_wrote() -> None:
    """The others take their shares of the rest as this proxy wrote it at the round's
    start; so does it: a call admitted between its write and its own read (0.2 s and a
    read) counts in its new share. Before, its share was counted from its read, and such
    calls were in nobody's rest. An event of its own the read finds stored counts once."""
    pol = policy_of(catalog(entitlements=[{"feature": "out", "limit": 1000}]))
    counter = pol.limits[0].account.current(NOW)[1]
    c = Counters(share_even_part=Fraction(1))  # 3 proxies, a third each: 300 left
    c.apply(Snapshot({counter: 700}, set(), {}, NOW, peers=fleet.Peers(alive=2)))
    first = [c.admit(pol, "openai", "gpt-4o", 0, 40, NOW) for _ in range(2)]
    assert all(isinstance(r, Reservation) for r in first)
    c.to_write()  # the round starts: 80 held, 220 left as the fleet reads it
    between = c.admit(pol, "openai", "gpt-4o", 0, 40, NOW)
    assert isinstance(between, Reservation)  # still the last round's share (80 < 100)
    c.apply(Snapshot({counter: 700}, set(), {}, NOW, peers=fleet.Peers(alive=2)))
    # A third of 220 is 73: the call admitted after the write and one more (80) take it.
    calls = [c.admit(pol, "openai", "gpt-4o", 0, 40, NOW) for _ in range(2)]
    assert [isinstance(r, Reservation) for r in calls] == [True, False]

    # An event pending when written and stored by the read: in the store, not twice.
    d = Counters(share_even_part=Fraction(1))
    d.apply(Snapshot({counter: 700}, set(), {}, NOW, peers=fleet.Peers(alive=2)))
    d.record(pol, "e1", "openai", "gpt-4o", {"output": 90}, NOW)
    d.to_write()
    d.apply(Snapshot({counter: 790}, {"e1"}, {}, NOW, peers=fleet.Peers(alive=2)))
    calls = [d.admit(pol, "openai", "gpt-4o", 0, 30, NOW) for _ in range(4)]
    assert [isinstance(r, Reservation) for r in calls] == [True] * 3 + [False]  # 70 of 210


def test_settled_sums_are_shared_by_digest_latest_first(con: duckdb.DuckDBPyConnection) -> None:
    """Each proxy's row replaces its last; a joining proxy gets the latest boundary of
    its digest; rows not written for a day are dropped at the next write."""
    fleetsums.create_table(con, MD)
    fleetsums.create_table(con, MD)  # exists: nothing to do

    def state(digest: str, before: str, units: int) -> dict[str, Any]:
        return {"digest": digest, "settled_before": before, "settled": {"k": units}}

    assert fleetsums.latest(con, MD, "d1") is None
    fleetsums.write(con, MD, "a:1:x", state("d1", "2026-03-01T10:00:00+00:00", 1))
    fleetsums.write(con, MD, "b:1:x", state("d1", "2026-03-01T10:05:00+00:00", 2))
    fleetsums.write(con, MD, "c:1:x", state("d2", "2026-03-01T10:09:00+00:00", 3))
    assert fleetsums.latest(con, MD, "d1") == state("d1", "2026-03-01T10:05:00+00:00", 2)
    fleetsums.write(con, MD, "b:1:x", state("d2", "2026-03-01T10:10:00+00:00", 4))  # reloaded
    assert fleetsums.latest(con, MD, "d1") == state("d1", "2026-03-01T10:00:00+00:00", 1)
    assert fleetsums.latest(con, MD, "d2") == state("d2", "2026-03-01T10:10:00+00:00", 4)
    fleet.pg_execute(
        con, MD, f"UPDATE {fleetsums.TABLE} SET written_at = now() - interval '2 days'"
    )
    fleetsums.write(con, MD, "c:1:x", state("d2", "2026-03-01T10:11:00+00:00", 5))
    assert fleet.pg_query(con, MD, f"SELECT publisher FROM {fleetsums.TABLE}") == [("c:1:x",)]
    fleet.pg_execute(con, MD, f"DELETE FROM {fleetsums.TABLE}")
