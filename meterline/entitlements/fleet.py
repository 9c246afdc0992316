"""What a fleet's proxies hold between lake flushes, shared through the lake's PostgreSQL.

A proxy counts another proxy's calls only once their events are in the lake: a call
must end, be flushed and be read first, so a fleet of proxies over-admitted by every
call in that window (calls of 15 s ended at 1,010,000 tokens on a 500,000 cap). Each
proxy therefore writes, at every refresh, what it holds that the lake does not show yet
into a plain table of the lake's catalog database (:data:`TABLE`, not a DuckLake table:
no snapshot, no file), and reads the others' rows in the same refresh:

- ``reserved``: estimates of its calls in flight, per counter (:data:`Key`);
- ``in_flight``: the same per (customer, feature), as :class:`Counters` holds them;
- ``pending``: its events not seen in the lake at its last read, per event id. A reader
  drops those its own lake snapshot holds (one ``event_id IN`` query, with its own
  pending ids), so an event flushed meanwhile counts once, not twice;
- ``alive``: one row, that it runs: a reader counts the fleet's proxies, and each admits
  only its share of what a hard limit has left until the next refresh
  (:meth:`~meterline.entitlements.counters.Counters.admit`);
- ``demand``: the units its calls asked of each counter since its previous write,
  admitted or refused for its share: the shares follow them (:func:`share_of`).

What is still unseen: what another proxy admitted or metered since its last write (one
refresh interval); the share bounds it, and the proxies write and read in rounds
(:func:`until_round`), so that each share is taken of the same rest. A proxy that
stopped writing (killed, cut off) is forgotten when its rows expire (:func:`ttl_seconds`);
a reader drops expired rows by PostgreSQL's clock, so the proxies' clocks need not agree
for that (rounds need them within :data:`ROUND_READ_DELAY_S`; apart, a proxy's rounds
are its own, as before). A proxy that stops cleanly
withdraws its ``alive`` row at once (:func:`leave`).

Only a lake whose catalog is PostgreSQL is shared this way (a DuckDB file has one
writer). Values are SQL literals: names come from the catalog (a customer named
``o'brien``), never from traffic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import duckdb

from meterline.entitlements.policy import Key, counter_id
from meterline.sqltext import sql_string

TABLE = "meterline_fleet_live"
#: Pending events written one row each, at most; past it the rest go per counter (no id:
#: a reader cannot tell which of those the lake holds, and counts them).
MAX_PENDING_ROWS = 5000
_DDL = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
    " publisher text NOT NULL,"  # '<proxy id>:<pid>:<start>': one running proxy
    " kind text NOT NULL,"  # 'reserved' | 'in_flight' | 'pending' | 'demand' | 'alive'
    " customer text NOT NULL,"
    " feature text NOT NULL,"
    " cadence text,"  # the counter's account and period (NULL for in_flight)
    " anchor timestamp,"
    " period_start timestamp,"
    " event_id text,"  # pending: the event (NULL past MAX_PENDING_ROWS)
    " units bigint NOT NULL,"
    " expires_at timestamptz NOT NULL)"
)
Row = tuple[str, str, str, str | None, datetime | None, datetime | None, str | None, int]
"""(kind, customer, feature, cadence, anchor, period start, event id, units)."""
_INDEX = f"CREATE INDEX IF NOT EXISTS {TABLE}_publisher ON {TABLE} (publisher)"


#: A fleet's proxies read after the round's writes are in: this long after its start (or
#: a quarter of the refresh, if less), which covers their clocks' disagreement.
ROUND_READ_DELAY_S = 0.2


def until_round(now: float, refresh_s: float) -> float:
    """Seconds from ``now`` (epoch seconds) to the start of the fleet's next round.

    A proxy's reads come every ``refresh_s``; on their own, each proxy's fall at its own
    moments, and a proxy reading between another's read and its next write saw a rest
    that did not include what the other admitted meanwhile (up to its whole share):
    bursts spanning refreshes went past a cap by up to 1.40x with three proxies. In
    rounds, every proxy writes at the same instants (multiples of ``refresh_s`` of the
    epoch, by clocks kept in step) and reads :func:`read_delay` later: all read the
    same rest, of which each admits its share."""
    return refresh_s - (now % refresh_s)


def read_delay(now: float, refresh_s: float) -> float:
    """Seconds to wait after writing, at ``now``, before reading in this round."""
    into = now % refresh_s
    return max(0.0, min(ROUND_READ_DELAY_S, refresh_s / 4) - into)


def ttl_seconds(refresh_s: float) -> float:
    """How long a proxy's rows count after it wrote them: five refresh intervals, at
    least 10 s (a refresh waits for a lake read, which can take seconds under load)."""
    return max(10.0, 5 * refresh_s)


@dataclass(slots=True)
class Held:
    """What one proxy holds that the lake does not show yet."""

    reserved: dict[Key, int] = field(default_factory=dict)
    in_flight: dict[tuple[str, str], int] = field(default_factory=dict)
    pending: dict[str, list[tuple[Key, int]]] = field(default_factory=dict)
    """Event id -> its units per counter."""
    demand: dict[Key, int] = field(default_factory=dict)
    """Units asked per counter since the previous write (:func:`share_of`)."""


@dataclass(slots=True)
class Peers:
    """The other proxies' figures, as a reader counts them."""

    used: dict[Key, int] = field(default_factory=dict)
    """Their metered units the lake did not hold at the reader's snapshot."""
    reserved: dict[Key, int] = field(default_factory=dict)
    in_flight: dict[tuple[str, str], int] = field(default_factory=dict)
    alive: int = 0
    """How many other proxies are running (each writes an ``alive`` row at every
    refresh, holding something or not): a hard limit's rest is split between them all."""
    demand: dict[Key, int] = field(default_factory=dict)
    """Units their calls asked of each counter in the round before (:func:`share_of`)."""


#: The part of a limit's rest split evenly between a fleet's proxies when the shares
#: follow demand (``meter_governance_share=demand``); the rest goes by each one's demand.
EVEN_PART = Fraction(1, 5)


def share_of(own: int, others: int, proxies: int, even_part: Fraction) -> Fraction:
    """This proxy's share of what a hard limit has left until the next round.

    ``own`` and ``others``: the units this proxy's and the other proxies' calls asked of
    the limit's counter in the round before, as written (every proxy reads the same
    figures, so the shares add up to 1: the fleet admits the rest, as one proxy would);
    ``even_part`` of the rest is split evenly (1: all of it, ``even``), the remainder
    in proportion to demand. An even split let a lone busy proxy take only 1/n of what
    was left per round, refusing calls the cap had room for (41 of 100 with three proxies,
    the cap reached in 16 s instead of 8); by demand it takes most of it, and a proxy
    whose calls start meanwhile still has ``even_part / n`` of it, its calls then asking
    for more the round after. With no demand at all, the split is even."""
    total = own + others
    if total <= 0:
        return Fraction(1, proxies)
    return even_part / proxies + (1 - even_part) * Fraction(own, total)


def pg_text(text: str) -> str:
    """``text`` as a PostgreSQL escape string, read the same whatever the server's
    ``standard_conforming_strings`` (a proxy id ``o\\'brien`` broke a plain literal)."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _ts(value: datetime) -> str:
    return pg_text(value.astimezone(UTC).replace(tzinfo=None).isoformat(" "))


def pg_execute(con: duckdb.DuckDBPyConnection, alias: str, script: str) -> None:
    """Run ``script`` (statements separated by ``;``) on ``alias``'s PostgreSQL server."""
    con.execute(
        f"CALL postgres_execute({sql_string(alias)}, {sql_string(script)}, use_transaction = false)"
    )


def pg_query(con: duckdb.DuckDBPyConnection, alias: str, query: str) -> list[Any]:
    """The rows of ``query``, run as it is on ``alias``'s PostgreSQL server."""
    return con.execute(
        f"SELECT * FROM postgres_query({sql_string(alias)}, {sql_string(query)})"
    ).fetchall()


def _key_values(key: Key) -> str:
    customer, feature, cadence, anchor, start = key
    names = f"{pg_text(customer)}, {pg_text(feature)}, {pg_text(cadence)}"
    return f"{names}, {_ts(anchor)}, {_ts(start)}"


def _rows(publisher: str, held: Held, ttl_s: float, max_pending: int) -> Iterable[str]:
    who = pg_text(publisher)
    until = f"now() + interval '{ttl_s:.3f} seconds'"
    yield f"({who}, 'alive', '', '', NULL, NULL, NULL, NULL, 0, {until})"
    for key, units in held.reserved.items():
        yield f"({who}, 'reserved', {_key_values(key)}, NULL, {int(units)}, {until})"
    for key, units in held.demand.items():
        yield f"({who}, 'demand', {_key_values(key)}, NULL, {int(units)}, {until})"
    for (customer, feature), units in held.in_flight.items():
        yield (
            f"({who}, 'in_flight', {pg_text(customer)}, {pg_text(feature)}, "
            f"NULL, NULL, NULL, NULL, {int(units)}, {until})"
        )
    overflow: dict[Key, int] = {}
    for n, (event_id, parts) in enumerate(held.pending.items()):
        for key, units in parts:
            if n < max_pending:
                event = pg_text(event_id)
                yield f"({who}, 'pending', {_key_values(key)}, {event}, {units}, {until})"
            else:
                overflow[key] = overflow.get(key, 0) + units
    for key, units in overflow.items():
        yield f"({who}, 'pending', {_key_values(key)}, NULL, {units}, {until})"


def is_shared(con: duckdb.DuckDBPyConnection, alias: str) -> bool:
    """Whether ``alias`` (a lake's catalog database) is PostgreSQL, which proxies share."""
    row = con.execute(
        f"SELECT type FROM duckdb_databases() WHERE database_name = {sql_string(alias)}"
    ).fetchone()
    return row is not None and row[0] == "postgres"


def table_exists(con: duckdb.DuckDBPyConnection, alias: str, table: str = TABLE) -> bool:
    """Whether ``table`` is in ``alias``'s PostgreSQL database (on the role's path)."""
    exists = (
        f"SELECT count(*) FROM pg_catalog.pg_tables WHERE tablename = {pg_text(table)} "
        "AND schemaname = ANY (current_schemas(false))"
    )
    found = pg_query(con, alias, exists)
    return bool(found and found[0][0])


def create_table(con: duckdb.DuckDBPyConnection, alias: str) -> None:
    """Create :data:`TABLE` unless it exists: the lake's role owns its database, or an
    administrator created the table and granted the role ``SELECT, INSERT, DELETE`` on it
    (PostgreSQL checks the privilege to create before ``IF NOT EXISTS``, so the DDL is
    not run then)."""
    if table_exists(con, alias):
        return
    script = f"{_DDL}; {_INDEX}"
    pg_execute(con, alias, script)


def publish(
    con: duckdb.DuckDBPyConnection,
    alias: str,
    publisher: str,
    held: Held,
    ttl_s: float,
    max_pending: int = MAX_PENDING_ROWS,
) -> None:
    """Replace ``publisher``'s rows with ``held``, in one PostgreSQL transaction (a reader
    sees the old rows or the new ones), and drop every publisher's rows expired for a
    minute (a proxy that stopped). Pending events past ``max_pending`` are summed per
    counter, with no id."""
    statements = ["BEGIN", f"DELETE FROM {TABLE} WHERE publisher = {pg_text(publisher)}"]
    rows = list(_rows(publisher, held, ttl_s, max_pending))
    statements.append(f"INSERT INTO {TABLE} VALUES {', '.join(rows)}")
    statements += [
        f"DELETE FROM {TABLE} WHERE expires_at < now() - interval '1 minute'",
        "COMMIT",
    ]
    script = "; ".join(statements)
    pg_execute(con, alias, script)


def leave(con: duckdb.DuckDBPyConnection, alias: str, publisher: str) -> None:
    """Withdraw ``publisher``'s ``alive`` and ``demand`` rows (a proxy stopping): the others
    no longer keep a share for it, nor weigh theirs against its demand. What it held stays
    until it expires (its events may not be in the lake yet; its calls in flight were cut)."""
    script = (
        f"DELETE FROM {TABLE} WHERE publisher = {pg_text(publisher)} "
        "AND kind IN ('alive', 'demand')"
    )
    pg_execute(con, alias, script)


def read_rows(con: duckdb.DuckDBPyConnection, alias: str, publisher: str) -> list[Row]:
    """The other publishers' rows not expired: (kind, customer, feature, cadence, anchor,
    period start, event id, units). A table not created yet (no proxy wrote) is empty."""
    query = (
        "SELECT kind, customer, feature, cadence, anchor, period_start, event_id, units "
        f"FROM {TABLE} WHERE publisher <> {pg_text(publisher)} AND expires_at > now()"
    )
    if not table_exists(con, alias):
        return []
    return pg_query(con, alias, query)


def _utc(value: datetime | None) -> datetime:
    assert value is not None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def peers_from(
    rows: Iterable[Row],
    stored_ids: set[str],
) -> Peers:
    """Sum the rows read by :func:`read_rows`. ``stored_ids``: the pending event ids the
    reader counts already (its lake snapshot holds them, or they are its own pending).
    An event two publishers name (a proxy restarted within its rows' life counts its
    spool again) counts once."""
    peers = Peers()
    seen: set[tuple[str, Key]] = set()
    for kind, customer, feature, cadence, anchor, start, event_id, units in rows:
        if kind == "alive":
            peers.alive += 1
            continue
        if kind == "in_flight":
            cf = (customer, feature)
            peers.in_flight[cf] = peers.in_flight.get(cf, 0) + int(units)
            continue
        key: Key = (customer, feature, cadence or "", _utc(anchor), _utc(start))
        if kind == "reserved":
            peers.reserved[key] = peers.reserved.get(key, 0) + int(units)
        elif kind == "demand":
            peers.demand[key] = peers.demand.get(key, 0) + int(units)
        elif kind == "pending":
            if event_id is not None:
                if event_id in stored_ids or (event_id, key) in seen:
                    continue
                seen.add((event_id, key))
            peers.used[key] = peers.used.get(key, 0) + int(units)
    return peers


def pending_ids(
    rows: Iterable[Row],
) -> list[str]:
    """The event ids the rows name as pending (to look for in the lake)."""
    return list({r[6] for r in rows if r[0] == "pending" and r[6] is not None})


def reserved_by_counter(con: duckdb.DuckDBPyConnection, alias: str) -> dict[str, int] | None:
    """Every running proxy's calls in flight per counter id (``billing entitlements`` on a
    fleet's lake); None when ``alias`` is not a shared (PostgreSQL) catalog."""
    if not is_shared(con, alias):
        return None
    peers = peers_from(read_rows(con, alias, publisher=""), set())  # no publisher is ''
    return {counter_id(k): v for k, v in peers.reserved.items()}


def reason(error: Exception) -> str:
    """PostgreSQL's own words for ``error`` (DuckDB's message quotes the whole statement)."""
    text = str(error)
    if "ERROR:" in text:
        text = text.rsplit("ERROR:", 1)[1]
    return " ".join(text.split())[:200] or type(error).__name__
