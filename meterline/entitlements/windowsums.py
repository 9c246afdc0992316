"""Units per counter window, summed from the store, and kept between governance's reads.

A counter is an account's period (or the part of it before an instant) over its
customer's consumers: windows ``(consumer, start, end)`` of event time. One query joins
the events to every window and sums them per (window, provider, model, way served); the
few rows are mapped to features in Python with the same matching the proxy uses for its
own events. Windows with the same consumer and bounds (two limits of one plan, one
period) are summed once and given to each of their accounts.

**Kept sums.** The proxy re-reads the store every ``meter_governance_refresh`` (2 s by
default); summing the whole current period each time costs what the period holds (1.2 s
of a 2-core machine's time for 10M events, every 2 s). :class:`KeptSums` splits each
window by ``ingested_at``: what was ingested before a *settled* boundary is kept in
memory, and a read sums only the events ingested since the previous boundary. The
boundary trails the read's clock by :data:`SETTLE_MARGIN`: a batch stored after a read
has an ``ingested_at`` (stamped when its flush began, by its writer's clock) later than
that read's time minus the margin, as long as no flush takes longer than the margin and
no proxy's clock is behind by more than it (the same assumption as ``billing invoice
generate --settle``). Rows are never updated or deleted, so what was settled stays
exact. A batch that breaks the assumption (a flush stuck for minutes, an import with old
``ingested_at`` values) is found by the next whole read: at least every
:data:`RESYNC_EVERY` (or 100 times as long as a whole read takes, when that is longer).

**Changes.** When the windows change (a catalog reload, a new period, an invoice), each
counter's identity (its key, its meter's content, its windows: :meth:`Windows.identities`)
is compared with the last read's: counters that kept theirs keep their sums and are read
since the boundary as usual; only the others (a customer or limit added, a consumer
moved, a meter edited, a new period's counters) are summed whole. Before, every reload,
even of an unchanged catalog, summed every counter over the whole period.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from meterline.entitlements.policy import Account, Key
from meterline.eventschema import TOKEN_COLUMNS
from meterline.periods import Period
from meterline.served import SERVED_COLUMNS, SERVED_SQL, Served
from meterline.sqltext import sql_string

#: How far the settled boundary trails a read (longer than any flush, any clock skew).
SETTLE_MARGIN = timedelta(minutes=2)
#: A full read of every window at least this often (see the module's docstring)...
RESYNC_EVERY = timedelta(minutes=15)
#: ... or, where a whole read takes long (a lake holding a big fleet's month), once per
#: this many times its duration: whole reads take at most ~1% of the reading thread.
RESYNC_COST_FACTOR = 100


def resync_interval(whole_read_s: float, least: timedelta = RESYNC_EVERY) -> timedelta:
    """How long after a whole read that took ``whole_read_s`` seconds the next one is due."""
    return max(least, timedelta(seconds=whole_read_s * RESYNC_COST_FACTOR))


def sql_ts(value: datetime) -> str:
    return f"TIMESTAMP '{value.astimezone(UTC).replace(tzinfo=None).isoformat(' ')}'"


def key_text(key: Key) -> str:
    """A counter's key as text (in the kept sums' file)."""
    customer, feature, cadence, anchor, start = key
    return json.dumps([customer, feature, cadence, anchor.isoformat(), start.isoformat()])


def _count_ingested(
    con: duckdb.DuckDBPyConnection, after: datetime | None, before: datetime
) -> int:
    """Events ingested in ``[after, before)``, every consumer's (the kept sums' check)."""
    since = "" if after is None else f"ingested_at >= {sql_ts(after)} AND "
    row = con.execute(
        f"SELECT count(*) FROM usage_events WHERE {since}ingested_at < {sql_ts(before)}"
    ).fetchone()
    return int(row[0]) if row else 0


Window = tuple[str, datetime, datetime]
"""(consumer, start, end): the events of one consumer with ``start <= ts < end``."""


@dataclass
class Windows:
    """The counters to read: each account's key and the windows it sums."""

    keyed: list[tuple[Account, Key]] = field(default_factory=list)
    by_window: dict[Window, list[int]] = field(default_factory=dict)
    """Each distinct window and the indexes (into ``keyed``) of the accounts it feeds."""
    out: dict[Key, int] = field(default_factory=dict)
    """Every counter asked for, at 0 (one with no window stays 0)."""

    def add(
        self,
        acct: Account,
        key: Key,
        period: Period,
        consumers: Sequence[str],
        until: datetime | None = None,
    ) -> None:
        """``until``: count only the period's events before it (none when it is not after
        the period's start)."""
        if key in self.out:
            return
        self.out[key] = 0
        end = period.end if until is None else min(period.end, until)
        if end <= period.start:
            return
        n = len(self.keyed)
        self.keyed.append((acct, key))
        for consumer in consumers:
            self.by_window.setdefault((consumer, period.start, end), []).append(n)

    def signature(self) -> tuple[Any, ...]:
        """What the sums depend on: the windows, the counters they feed and how each
        counts (the meter object: a reload makes new ones; :class:`KeptSums` keeps these
        accounts, so an id is not reused while compared)."""
        return (
            tuple((key, id(acct.meter)) for acct, key in self.keyed),
            tuple((w, tuple(ns)) for w, ns in self.by_window.items()),
        )

    def digest(self) -> str:
        """:meth:`signature` as content: the same catalog and periods give the same digest
        in another process (the kept sums a restarted proxy may take up)."""
        h = hashlib.sha256()
        for acct, key in self.keyed:
            h.update(json.dumps([key_text(key), acct.meter.model_dump_json()]).encode())
        for (consumer, start, end), feeds in self.by_window.items():
            h.update(json.dumps([consumer, start.isoformat(), end.isoformat(), feeds]).encode())
        return h.hexdigest()

    def identities(self) -> dict[Key, tuple[str, tuple[Window, ...]]]:
        """Each counter's content: what its account counts (the meter) and the windows it
        sums. Two reads of one catalog (or of two catalogs that differ elsewhere) give a
        counter the same identity: its kept sums still hold (:meth:`KeptSums.read`)."""
        fed: list[list[Window]] = [[] for _ in self.keyed]
        for window, feeds in self.by_window.items():
            for n in feeds:
                fed[n].append(window)
        meters: dict[int, str] = {}
        out: dict[Key, tuple[str, tuple[Window, ...]]] = {}
        for n, (acct, key) in enumerate(self.keyed):
            meter = meters.get(id(acct.meter))
            if meter is None:
                meter = meters[id(acct.meter)] = acct.meter.model_dump_json()
            out[key] = (meter, tuple(sorted(fed[n])))
        return out

    def subset(self, keys: set[Key]) -> Windows:
        """The counters of ``keys`` and the windows that feed them."""
        sub = Windows()
        index: dict[int, int] = {}
        for n, (acct, key) in enumerate(self.keyed):
            if key in keys:
                index[n] = len(sub.keyed)
                sub.keyed.append((acct, key))
                sub.out[key] = 0
        for window, feeds in self.by_window.items():
            mine = [index[n] for n in feeds if n in index]
            if mine:
                sub.by_window[window] = mine
        return sub

    def read(self, con: duckdb.DuckDBPyConnection) -> dict[Key, int]:
        """Every counter's units, summed over all its events."""
        out = dict(self.out)
        for _settled, key, units in self._units(self._rows(con, None, None), {}):
            out[key] += units
        return out

    def _rows(
        self,
        con: duckdb.DuckDBPyConnection,
        ingested_from: datetime | None,
        settled_before: datetime | None,
    ) -> list[tuple[Any, ...]]:
        """Sums per (window, settled, provider, model, way served): ``settled`` says the
        events were ingested before ``settled_before``; only events ingested at or after
        ``ingested_from`` are read."""
        if not self.by_window:
            return []
        windows = list(self.by_window)
        values = ", ".join(
            f"({n}, {sql_string(c)}, {sql_ts(s)}, {sql_ts(e)})"
            for n, (c, s, e) in enumerate(windows)
        )
        # Only the columns some meter here tells apart are read (a scan of 10M events
        # costs per column): token columns no meter counts are summed as 0, and how a
        # call was served is not read when no meter filters on it (NULL counts everywhere).
        meters = {id(acct.meter): acct.meter for acct, _ in self.keyed}.values()
        counted = {t for meter in meters for t in meter.token_types}
        sums = ", ".join(
            f"SUM(e.{col})::BIGINT" if t in counted else "0::BIGINT"
            for t, col in TOKEN_COLUMNS.items()
        )
        filtered = any(m.service_tier or m.speed or m.inference_geo for m in meters)
        served = SERVED_SQL if filtered else ", ".join(["NULL"] * len(SERVED_COLUMNS))
        since = min(s for _, s, _ in windows)
        settled = "false" if settled_before is None else f"e.ingested_at < {sql_ts(settled_before)}"
        fresh = "" if ingested_from is None else f" AND e.ingested_at >= {sql_ts(ingested_from)}"
        return con.execute(
            f"""
            WITH w(window_id, consumer, w_start, w_end) AS (VALUES {values})
            SELECT w.window_id, {settled}, e.provider, coalesce(e.model, ''), {served},
                   {sums}
            FROM usage_events AS e
            JOIN w ON e.consumer = w.consumer AND e.ts >= w.w_start AND e.ts < w.w_end
            WHERE e.ts >= {sql_ts(since)}{fresh}
            GROUP BY ALL
            """
        ).fetchall()

    def _units(
        self, rows: Iterable[tuple[Any, ...]], counted: dict[tuple[Any, ...], tuple[int, ...]]
    ) -> Iterable[tuple[bool, Key, int]]:
        """(settled, counter, units) of each row, for every account its window feeds.

        ``counted`` memoises which token columns a meter counts of a provider's model
        served one way (the same few combinations recur in every read, and the accounts of
        one feature share its meter: a few dozen entries, not one per account; valid while
        the meters it names live, i.e. until the windows change)."""
        feeds = list(self.by_window.values())
        keyed = self.keyed
        for window_id, settled, provider, model, tier, speed, geo, *tokens in rows:
            for n in feeds[window_id]:
                memo = (id(keyed[n][0].meter), provider, model, tier, speed, geo)
                columns = counted.get(memo)
                if columns is None:
                    columns = self._counted_columns(n, provider, model, tier, speed, geo)
                    counted[memo] = columns
                units = sum(int(tokens[i] or 0) for i in columns)
                if units:
                    yield bool(settled), keyed[n][1], units

    def _counted_columns(
        self, n: int, provider: str, model: str, tier: Any, speed: Any, geo: Any
    ) -> tuple[int, ...]:
        """Positions (in :data:`TOKEN_COLUMNS`) of the token types account ``n`` counts."""
        acct, served = self.keyed[n][0], Served(tier, speed, geo)
        return tuple(
            i for i, t in enumerate(TOKEN_COLUMNS) if acct.tokens(provider, model, served, {t: 1})
        )


@dataclass
class KeptSums:
    """Window sums kept between reads of one store (one per reading thread and store)."""

    margin: timedelta = SETTLE_MARGIN
    resync: timedelta = RESYNC_EVERY
    """The least time between two whole reads (:func:`resync_interval`)."""
    _signature: tuple[Any, ...] | None = None
    _windows: Windows | None = None
    """The windows of the settled sums (their accounts kept: a meter's id in the
    signature is not reused while compared)."""
    _settled: dict[Key, int] = field(default_factory=dict)
    _settled_before: datetime | None = None
    """Every event ingested before it is summed in ``_settled``."""
    _full_at: datetime | None = None
    _due_after: timedelta = RESYNC_EVERY
    _counted: dict[tuple[Any, ...], tuple[int, ...]] = field(default_factory=dict)
    _settled_rows: int = 0
    """Events of the store (every consumer's) ingested before ``_settled_before``."""
    _restored: dict[str, Any] | None = None
    shared: Callable[[str], dict[str, Any] | None] | None = None
    """The sums another proxy of a fleet saved for a digest (:mod:`.fleetsums`), taken up
    at the first read when this proxy has none of its own that hold."""
    taken_from_fleet: bool = False
    """Whether the first read took up sums another proxy saved."""
    reads: int = 0
    full_reads: int = 0
    """Reads that summed whole windows (the first, every ``resync``)."""
    changed_reads: int = 0
    """Reads after the windows changed (a catalog reload, a new period, an invoice) that
    summed whole only the counters that changed."""

    def read(
        self, con: duckdb.DuckDBPyConnection, windows: Windows, at: datetime
    ) -> dict[Key, int]:
        """Every counter's units at ``at`` (read in ``con``'s current transaction)."""
        self.reads += 1
        signature = windows.signature()
        taken_up = False
        if self._restored is not None:
            restored, self._restored = self._restored, None
            taken_up = self._take_up(con, windows, signature, restored, at)
        if not taken_up and self._signature is None and self.shared is not None:
            joined = self.shared(windows.digest())
            if joined is not None:
                taken_up = self.taken_from_fleet = self._take_up(
                    con, windows, signature, joined, at
                )
        changed = signature != self._signature
        if changed:
            self._counted = {}
        boundary = at - self.margin
        full = (
            self._windows is None
            or self._settled_before is None
            or self._full_at is None
            or boundary < self._settled_before  # the clock went back
            # a whole read due at a restart comes at the next read: the calls that wait
            # for this first one are not kept waiting for it
            or (at - self._full_at >= max(self.resync, self._due_after) and not taken_up)
        )
        since = None if full else self._settled_before
        # What each part of the windows sums: since the boundary where its sums are kept,
        # whole where they are not (every window at a whole read; after a change, only
        # the counters whose identity changed: a new customer, a new limit, a consumer
        # moved, a new period).
        parts: list[tuple[Windows, datetime | None]] = [(windows, since)]
        carried = {} if full else self._settled
        if changed and not full:
            assert self._windows is not None
            before = self._windows.identities()
            now = windows.identities()
            same = {key for key, identity in now.items() if before.get(key) == identity}
            if same:
                parts = [(windows.subset(same), since), (windows.subset(now.keys() - same), None)]
                carried = {key: units for key, units in self._settled.items() if key in same}
                self.changed_reads += 1
            else:
                parts, carried, full, since = [(windows, None)], {}, True, None
        settled = dict(carried)
        out = dict(windows.out)
        for key, units in carried.items():
            out[key] += units
        started = time.monotonic()
        for part, part_since in parts:
            rows = part._rows(con, part_since, boundary)
            for is_settled, key, units in part._units(rows, self._counted):
                out[key] += units
                if is_settled:
                    settled[key] = settled.get(key, 0) + units
        newly = _count_ingested(con, since, boundary)
        self._settled_rows = newly if full else self._settled_rows + newly
        self._signature, self._windows = signature, windows
        self._settled, self._settled_before = settled, boundary
        if full:
            self._full_at = at
            self.full_reads += 1
            self._due_after = resync_interval(time.monotonic() - started, self.resync)
        return out

    # ------------------------------------------------------------------ across restarts

    def state(self) -> dict[str, Any] | None:
        """The settled sums as JSON, for a restarted proxy to take up (None before a read)."""
        if self._windows is None or self._settled_before is None or self._full_at is None:
            return None
        return {
            "version": 1,
            "digest": self._windows.digest(),
            "settled_before": self._settled_before.isoformat(),
            "settled_rows": self._settled_rows,
            "full_at": self._full_at.isoformat(),
            "due_after_s": self._due_after.total_seconds(),
            "settled": {key_text(k): v for k, v in self._settled.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take up ``state`` (from :meth:`state`) at the first read, if it still holds."""
        self._restored = state

    def _take_up(
        self,
        con: duckdb.DuckDBPyConnection,
        windows: Windows,
        signature: tuple[Any, ...],
        state: dict[str, Any],
        at: datetime,
    ) -> bool:
        """Adopt the settled sums of an earlier run when they are this store's and these
        windows': the same digest (catalog, periods, consumers), a boundary behind ``at``,
        and as many events ingested before it as when they were kept (an event deleted,
        or stored behind the boundary since, or another store at the same place: the
        whole read that follows counts them)."""
        try:
            if state.get("version") != 1 or state["digest"] != windows.digest():
                return False
            before = datetime.fromisoformat(state["settled_before"])
            full_at = datetime.fromisoformat(state["full_at"])
            if not full_at <= before + self.margin <= at:
                return False
            by_text = {key_text(key): key for _, key in windows.keyed}
            settled = {by_text[text]: int(units) for text, units in state["settled"].items()}
            rows = int(state["settled_rows"])
            due_after = timedelta(seconds=float(state["due_after_s"]))
        except (KeyError, TypeError, ValueError, AttributeError):
            return False  # a file from another version, or cut: read whole
        if _count_ingested(con, None, before) != rows:
            return False
        self._signature, self._windows = signature, windows
        self._settled, self._settled_before, self._settled_rows = settled, before, rows
        self._full_at, self._due_after = full_at, due_after
        return True
