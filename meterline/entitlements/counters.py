"""In-memory counters and the admission decision: no I/O, no lock, one thread.

A counter holds, per (customer, feature, usage period), three figures:

- ``stored``: units the store held at the last :class:`Snapshot` (every proxy's events);
- ``pending``: units of this proxy's own events the snapshot did not contain yet
  (recorded since, or still in the spool), kept per event id so a later snapshot that
  contains an event drops it from ``pending`` and nothing is counted twice;
- ``reserved``: estimates of calls in flight, released when they finish.

A call is admitted while ``stored + pending + reserved < limit + granted`` for every hard
limit it touches (``granted``: the customer's unit grants of that feature that invoices
have not consumed yet) (so the call that reaches or crosses a limit is the last one allowed), and,
for a prepaid plan, while the cost bound of the same units is below the credit balance.
An admitted call reserves its estimate at once, so concurrent calls see each other: the
overshoot of a hard limit is bounded by the estimate of the last call admitted (its
reservation fits an upper bound of its usage), plus, in a fleet, what other proxies
admitted since the last snapshot.

A call's event is counted in the period its call *ends* in (its ``ts``, as invoices
count it), so a call admitted before a period boundary and still in flight after it
settles into the new period, which never reserved it. Admission therefore counts, on
top of the current period's own figures, every reservation of the customer's feature
still in flight (:attr:`Counters.in_flight`), those made in earlier periods included:
without it a boundary let the new period admit its whole limit while the old period's
calls landed in it as well (4,000 used against 2,000). They are held per (customer,
feature), not per account, as a call settles into whatever account the policy gives that
feature when it ends: a plan switch, a new subscription or an edited period changes the
account (its cadence or anchor) while calls are in flight, and those calls land in the
new account's period all the same (before, they were held only under the old account:
45 calls in flight at a switch and 50 more admitted, 9,500 used against 5,000). The old
period is not freed early either: its reservations count there until released, as before.

A prepaid customer's cost counts the current period and every earlier period of the
subscription that no invoice has billed yet (the snapshot reads them): the balance only
drops when an invoice consumes it, so without them each new period could spend it again.

A counter whose window the store was never read for (an override that starts mid-period,
a reload that changes a period, a new subscription) is *unread*: its stored usage is
unknown, so a hard limit or prepaid plan on it refuses with ``unavailable`` (503, retry)
until a snapshot covers it, unless the store cannot be read and the failure policy is
``allow`` (:attr:`Counters.unread_as_zero`). A period that begins after the snapshot is
known, of any account (a subscription that starts later included): the store held
nothing of it then (before, a new subscription's first period was unread until the next
read: 503 for its first calls).

Only the event loop calls :class:`Counters` methods; a refresh thread builds a
:class:`Snapshot` and hands it over with :meth:`Counters.apply` on the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from fractions import Fraction

from iso4217 import Currency

from meterline.entitlements import fleet
from meterline.entitlements.cost import to_decimal
from meterline.entitlements.fleet import Peers
from meterline.entitlements.policy import (
    INPUT_TYPES,
    OUTPUT_TYPES,
    Account,
    CustomerPolicy,
    Key,
    Matched,
)
from meterline.periods import Period
from meterline.served import Served

RefusalKind = str
"""``limit`` (429), ``credits`` (429), ``not_granted`` (403), ``unavailable`` (503)."""


IN_FLIGHT_RETRY_AFTER = 2
"""Seconds a call refused only for the reservations of calls in flight is told to wait."""


@dataclass(frozen=True, slots=True)
class Refusal:
    kind: RefusalKind
    message: str
    reason: str
    """Short code stored in the event's ``reason`` column: ``limit:<feature>``..."""
    retry_after: int | None = None
    """Seconds until the period resets (the limit frees up), if known."""
    retry: bool = False
    """Whether a client should retry (a counter being read): ``x-should-retry``."""


def _units(types: tuple[str, ...], input_bound: int, output_bound: int, searches: int) -> int:
    """A call's estimate on an account counting ``types``: one input bound for every input
    type together, one output bound for text and audio output together, and the searches
    the call's tools may run."""
    return (
        (output_bound if not OUTPUT_TYPES.isdisjoint(types) else 0)
        + (input_bound if not INPUT_TYPES.isdisjoint(types) else 0)
        + (searches if "web_search" in types else 0)
    )


def _held_in_flight(kind: RefusalKind, what: str, reason: str, held: str = "") -> Refusal:
    """A refusal only calls in flight cause (``what``: the cap and what is used of it):
    they settle within moments, usually below what they reserved, so it asks for a retry
    in :data:`IN_FLIGHT_RETRY_AFTER` seconds (``x-should-retry: true``); ``held``: how
    much they hold, when told."""
    return Refusal(
        kind,
        f"Meterline: {what}, the rest held by calls in flight{held}; retry in a moment.",
        reason,
        IN_FLIGHT_RETRY_AFTER,
        retry=True,
    )


def _places(currency: str) -> int:
    try:
        return Currency(currency).exponent or 0
    except ValueError:
        return 2


def money(value: Decimal | Fraction, currency: str, *, up: bool) -> str:
    """``value`` at the currency's precision (``1.00 USD``), rounded up (a cost bound) or
    down (a balance), so a message never shows more than is there."""
    places = _places(currency)
    if up:
        return f"{to_decimal(Fraction(value), places)} {currency}"
    exact = Decimal(value) if isinstance(value, Decimal) else to_decimal(value)
    return f"{exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_FLOOR)} {currency}"


@dataclass(slots=True)
class Reservation:
    customer: str
    parts: list[tuple[Key, int]]
    flights: list[tuple[tuple[str, str], int]] = field(default_factory=list)
    """Units held in :attr:`Counters.in_flight` per (customer, feature), released with
    the parts."""


@dataclass(slots=True)
class Snapshot:
    """What the store held for the current periods, read off the request path."""

    stored: dict[Key, int]
    """Units per counter: every account's current period (0 when none), and for a prepaid
    plan's cost cards also the earlier periods of the subscription no invoice billed."""
    seen_pending: set[str]
    """Pending event ids found in the store."""
    balances: dict[str, Decimal]
    """Credit balance per customer (grants not expired, minus what invoices consumed)."""
    taken_at: datetime
    unit_balances: dict[tuple[str, str], int] = field(default_factory=dict)
    """Unit grants left per (customer, feature): added to that feature's hard limits."""
    grants_left: dict[str, tuple[tuple[datetime | None, Decimal], ...]] = field(
        default_factory=dict
    )
    """Per customer, every money grant with something left, expired ones included, as
    (expires at, left), in the order invoices take them: an expired grant still pays the
    invoice of a period that began before it expired (billing.credits)."""
    peers: Peers = field(default_factory=Peers)
    """The other proxies' figures read with it (a fleet on a PostgreSQL lake)."""


@dataclass
class Counters:
    stored: dict[Key, int] = field(default_factory=dict)
    pending: dict[str, list[tuple[Key, int]]] = field(default_factory=dict)
    pending_sum: dict[Key, int] = field(default_factory=dict)
    reserved: dict[Key, int] = field(default_factory=dict)
    in_flight: dict[tuple[str, str], int] = field(default_factory=dict)
    """Reserved units per (customer, feature), every period and account together (each
    call once, at its largest estimate among its accounts of the feature): calls in flight
    settle into the period they end in, maybe the next one, of whatever account (cadence,
    anchor) the feature has then."""
    balances: dict[str, Decimal] = field(default_factory=dict)
    snapshot_at: datetime | None = None
    unit_balances: dict[tuple[str, str], int] = field(default_factory=dict)
    grants_left: dict[str, tuple[tuple[datetime | None, Decimal], ...]] = field(
        default_factory=dict
    )
    peers: Peers = field(default_factory=Peers)
    """The other proxies of a fleet: their calls in flight and their events not in the
    store yet, as of the last snapshot (:mod:`meterline.entitlements.fleet`)."""
    share: bool = True
    """Split a hard limit's rest between the fleet's proxies (``meter_governance_share``)."""
    share_even_part: Fraction = fleet.EVEN_PART
    """The part of the rest split evenly; the remainder follows demand (1: ``even``)."""
    demand: dict[Key, int] = field(default_factory=dict)
    """Units this proxy's calls asked per counter since it last wrote (a fleet only)."""
    unread_as_zero: bool = False
    """Count unread counters from zero (the store is unreachable, failure policy ``allow``)."""
    _own_at_snapshot: dict[Key, int] = field(default_factory=dict)
    """This proxy's pending and reserved units per counter when the last snapshot was taken."""
    _demand_written: dict[Key, int] = field(default_factory=dict)
    """The demand this proxy last wrote for the fleet (:meth:`to_write`)."""
    _own_written: dict[Key, int] | None = None
    """This proxy's pending and reserved units per counter as it last wrote them, until
    the snapshot of that round takes them (:meth:`apply`)."""
    _pending_written: dict[str, list[tuple[Key, int]]] = field(default_factory=dict)
    """The pending events it last wrote."""
    _own_demand: dict[Key, int] = field(default_factory=dict)
    """The demand written in the round of the last snapshot: this proxy's share's weight."""
    _shares: dict[Key, tuple[int, int]] = field(default_factory=dict)
    """This proxy's share per counter in the last snapshot's round, as (numerator,
    denominator): computed at a counter's first check after a snapshot."""
    _balances: dict[str, Fraction] = field(default_factory=dict)
    _by_account: dict[tuple[str, str, str, datetime], list[Key]] = field(default_factory=dict)
    """The counters of each account in the last snapshot: current and earlier periods."""

    def period(self, acct: Account, at: datetime) -> Period:
        return acct.current(at)[0]

    # ------------------------------------------------------------------ reading

    def used(self, key: Key) -> int:
        """Units metered: stored, this proxy's pending and the other proxies' not stored."""
        return self.stored.get(key, 0) + self.pending_sum.get(key, 0) + self.peers.used.get(key, 0)

    def committed(self, key: Key) -> int:
        return self.used(key) + self.reserved.get(key, 0) + self.peers.reserved.get(key, 0)

    def admitting(self, key: Key) -> int:
        """What admission holds against ``key``'s limit: its used units, and every
        reservation of its customer's feature, those made in earlier periods or under an
        earlier account (another subscription, plan or period) included: they may settle
        into this one."""
        peers = self.peers
        cf = key[:2]
        return self.used(key) + max(
            self.in_flight.get(cf, 0) + peers.in_flight.get(cf, 0),
            self.reserved.get(key, 0) + peers.reserved.get(key, 0),
        )

    def unread(self, key: Key) -> bool:
        """Whether the store's usage of ``key``'s window is unknown (never read)."""
        at = self.snapshot_at
        if key in self.stored or self.unread_as_zero or at is None:
            return False  # before any snapshot, the owner decides (the failure policy)
        return key[4] < at  # a period that began after the read: the store had none of it

    def _costs(
        self, pol: CustomerPolicy, at: datetime, *, with_reserved: bool
    ) -> tuple[Fraction, dict[datetime, Fraction]]:
        """The cost bound of the current period, and of each earlier period not invoiced
        yet (by its start).

        ``with_reserved``: the calls in flight count in the current period, every one of
        the customer's feature (:meth:`admitting`): made under an earlier period or
        account (a new subscription, a cadence edit), they settle into this one, never
        into the period they were admitted in."""
        current = Fraction(0)
        earlier: dict[datetime, Fraction] = {}
        for cc in pol.cost_cards:
            key = cc.account.current(at)[1]
            current += cc.bound.cost(self.admitting(key) if with_reserved else self.used(key))
            for old in self._by_account.get(key[:4], ()):
                if old[4] < key[4]:
                    cost = cc.bound.cost(self.used(old))
                    earlier[old[4]] = earlier.get(old[4], Fraction(0)) + cost
        return current, earlier

    def cost_parts(
        self, pol: CustomerPolicy, at: datetime, *, with_reserved: bool
    ) -> tuple[Fraction, Fraction]:
        """The cost bound of the current period and of earlier periods not invoiced yet."""
        current, earlier = self._costs(pol, at, with_reserved=with_reserved)
        return current, sum(earlier.values(), Fraction(0))

    def credit_left(
        self, pol: CustomerPolicy, at: datetime, *, with_reserved: bool = True
    ) -> tuple[Fraction, Fraction]:
        """(the cost bound of the current period, the credit left for it): what the
        invoices of the earlier periods not invoiced yet will take is taken first, as
        they will take it (each period from the grants that had not expired when it
        began, in the invoices' order), and only grants not expired at ``at`` are left.
        ``with_reserved=False``: the units used only, without the calls in flight.

        Without earlier periods this is the balance (the hot path's usual case)."""
        current, earlier = self._costs(pol, at, with_reserved=with_reserved)
        if not any(earlier.values()):
            return current, self._balances.get(pol.customer, Fraction(0))
        grants = self.grants_left.get(pol.customer, ())
        left = [Fraction(amount) for _, amount in grants]
        for start in sorted(earlier):
            cost = earlier[start]
            for n, (until, _) in enumerate(grants):
                if cost <= 0:
                    break
                if until is not None and start >= until:
                    continue  # expired before that period began: not for its invoice
                take = min(left[n], cost)
                left[n] -= take
                cost -= take
        usable = (a for (until, _), a in zip(grants, left, strict=True) if not until or at < until)
        return current, sum(usable, Fraction(0))

    def _reading(self, pol: CustomerPolicy, feature: str, period: Period) -> Refusal:
        return Refusal(
            "unavailable",
            f"Meterline: the usage of {feature} by customer {pol.customer!r} since "
            f"{period.start:%Y-%m-%dT%H:%M:%SZ} is being read from the store; retry in a moment.",
            "unavailable",
            1,
            retry=True,
        )

    # ------------------------------------------------------------------ deciding

    def admit(
        self,
        pol: CustomerPolicy,
        provider: str,
        model: str,
        input_bound: int,
        output_bound: int,
        now: datetime,
        billed: tuple[str, ...] = (),
        searches: int = 0,
        tier: str | None = None,
        standard_speed: bool = False,
    ) -> Refusal | Reservation:
        """Refuse, or reserve the estimate on every account the call adds to.

        ``billed``: the models the provider was seen to bill calls naming ``model`` as
        (an alias it resolves): their limits apply too, and their accounts reserve.
        ``searches``: the server-side web searches the call may run (its tools' caps).
        ``tier``: the service tier the request asks for (None: any may serve it, so every
        tier's limits apply). ``standard_speed``: the request cannot run fast (it does not
        ask for fast mode), so limits of features counting only fast calls do not apply."""
        if pol.inactive is not None:
            return Refusal("not_granted", pol.inactive, "not_granted")
        matched: Matched = pol.matching_billed(provider, model, billed)
        if tier is not None:
            matched = matched.at_tier(tier)
        if standard_speed:
            matched = matched.at_standard_speed()
        if not matched.allowed:
            return Refusal(
                "not_granted",
                f"Meterline: plan {pol.plan!r} of customer {pol.customer!r} does not include "
                f"model {model or '(unknown)'!r} of {provider}.",
                "not_granted",
            )
        for lim in matched.limits:
            if not lim.hard or lim.limit is None:
                continue
            acct = lim.account
            period, key = acct.current(now)
            if key not in self.stored and self.unread(key):
                return self._reading(pol, acct.feature, period)
            used = self.admitting(key)
            granted = self.unit_balances.get((pol.customer, acct.feature), 0)
            cap = lim.limit + granted
            if used >= cap:
                return self._over(lim.source, lim.limit, granted, acct.feature, key, period, now)
            if self.fleet_size > 1 and self._over_share(key, cap - used):
                types = next((t for a, t in matched.counted if a is acct), ())
                self._asked(key, _units(types, input_bound, output_bound, searches))
                return _held_in_flight(
                    "limit",
                    f"{lim.source} limit of {lim.limit} {acct.feature} units per period: "
                    f"{self.used(key)} used, this proxy's share of the rest taken until the "
                    f"fleet's {self.fleet_size} proxies next compare",
                    f"limit:{acct.feature}",
                )
        if pol.prepaid:
            for cc in pol.cost_cards:
                period, key = cc.account.current(now)
                if key not in self.stored and self.unread(key):
                    return self._reading(pol, cc.account.feature, period)
            current, left = self.credit_left(pol, now)
            if left <= current:
                return self._out_of_credit(pol, current, now)
        return self.reserve(pol.customer, matched, input_bound, output_bound, now, searches)

    @property
    def fleet_size(self) -> int:
        """The running proxies of the fleet at the last snapshot, this one included, as
        the share counts them (1: no share): each may admit its share of what a hard
        limit has left until the next (:meth:`_over_share`)."""
        return 1 + self.peers.alive if self.share else 1

    def _own(self, key: Key) -> int:
        return self.pending_sum.get(key, 0) + self.reserved.get(key, 0)

    def _over_share(self, key: Key, left: int) -> bool:
        """Whether this proxy took its share of what ``key``'s limit had left at the last
        snapshot (``left``: what it has left now). Between two snapshots a proxy sees only
        its own calls, so each of ``n`` proxies admitting up to the whole rest let a burst
        through at up to ``n`` times it (3.0x a cap with three proxies). Each takes
        ``1/n`` of it: with ``g`` its units since the snapshot, the rest then was
        ``left + g`` and its share is taken once ``g >= (left + g) / n``, i.e. once
        ``(n - 1) * g >= left``. As at the limit itself, the call that crosses is the last.
        With shares by demand, ``1/n`` is :func:`~meterline.entitlements.fleet.share_of`
        this proxy's and the others' demand, written in the round the snapshot read."""
        grown = self._own(key) - self._own_at_snapshot.get(key, 0)
        if grown <= 0:
            return False
        share = self._shares.get(key)
        if share is None:
            weight = fleet.share_of(
                self._own_demand.get(key, 0),
                self.peers.demand.get(key, 0),
                self.fleet_size,
                self.share_even_part,
            )
            share = self._shares[key] = (weight.numerator, weight.denominator)
        num, den = share  # its share is taken once g >= share * (left + g)
        return grown * den >= num * (left + grown)

    def _asked(self, key: Key, units: int) -> None:
        demand = self.demand
        demand[key] = demand.get(key, 0) + units

    def to_write(self) -> fleet.Held:
        """What this proxy writes for the fleet at the start of a round (on the reading
        thread: dicts copied in C, no lock; a call counted as demand while it is taken
        may be lost to it, which only weighs the shares).

        Its own figures as written are what its share of the round is counted from
        (:meth:`apply`): the others read them, not what it admits until its own read of
        the round is applied. Counted from that read instead, the calls it admitted in
        between (0.2 s and a read) were in nobody's rest: each proxy went past its share
        by them."""
        reserved, pending = dict(self.reserved), dict(self.pending)
        pending_sum = dict(self.pending_sum)
        taken, self.demand = self.demand, {}
        self._demand_written = dict(taken)
        self._pending_written = pending
        self._own_written = {
            key: pending_sum.get(key, 0) + reserved.get(key, 0) for key in (*pending_sum, *reserved)
        }
        return fleet.Held(reserved, dict(self.in_flight), pending, self._demand_written)

    def reserve(
        self,
        customer: str,
        matched: Matched,
        input_bound: int,
        output_bound: int,
        now: datetime,
        searches: int = 0,
    ) -> Reservation:
        """Hold a call's estimate on every account ``matched`` counts it on (no check)."""
        parts: list[tuple[Key, int]] = []
        per_feature: dict[tuple[str, str], int] = {}
        reserved = self.reserved
        fleet_demand = self.demand if self.fleet_size > 1 else None
        for acct, types in matched.counted:
            units = _units(types, input_bound, output_bound, searches)
            if units:
                key = acct.current(now)[1]
                reserved[key] = reserved.get(key, 0) + units
                parts.append((key, units))
                if fleet_demand is not None:
                    fleet_demand[key] = fleet_demand.get(key, 0) + units
                # One call settles once per feature, whatever accounts it has (a daily
                # limit and a monthly cost card of the same feature): held once.
                cf = (key[0], key[1])
                per_feature[cf] = max(per_feature.get(cf, 0), units)
        in_flight = self.in_flight
        for cf, units in per_feature.items():
            in_flight[cf] = in_flight.get(cf, 0) + units
        return Reservation(customer, parts, list(per_feature.items()))

    def _over(
        self,
        source: str,
        limit: int,
        granted: int,
        feature: str,
        key: Key,
        period: Period,
        now: datetime,
    ) -> Refusal:
        """The refusal of a call at a hard limit. When the units *used* are still below
        it, calls in flight hold the rest: they settle within moments, usually below
        what they reserved, so the refusal says so and asks for a retry (before, it gave
        the period's reset, days away, with ``x-should-retry: false``, and the same call
        was admitted a moment later)."""
        used = self.used(key)
        total = f"{limit} {feature} units per period{f' (+{granted} granted)' if granted else ''}"
        if used < limit + granted:
            return _held_in_flight(
                "limit", f"{source} limit of {total}: {used} used", f"limit:{feature}"
            )
        return Refusal(
            "limit",
            f"Meterline: {source} limit of {total} reached ({used} used); it resets at "
            f"{period.end:%Y-%m-%dT%H:%M:%SZ}.",
            f"limit:{feature}",
            max(1, int((period.end - now).total_seconds()) + 1),
        )

    def _out_of_credit(self, pol: CustomerPolicy, committed: Fraction, now: datetime) -> Refusal:
        """The refusal of a prepaid customer's call whose cost bound, with the calls in
        flight, reaches the credit left (``committed``: the current period's). When the
        cost *used* is still below the credit, calls in flight hold the rest, as at a hard
        limit (:meth:`_over`): retry in a moment (before, it said "used up", gave the
        reserved cost as the cost so far and ``x-should-retry: false``). Used and held
        figures are given apart."""
        used, left = self.credit_left(pol, now, with_reserved=False)
        _, earlier = self.cost_parts(pol, now, with_reserved=True)
        cur = pol.currency
        balance = money(self.balances.get(pol.customer, Decimal(0)), cur, up=False)
        held = committed - used
        figures = f"balance {balance}, period cost so far {money(used, cur, up=True)}"
        if earlier:
            figures += f", earlier periods not invoiced {money(earlier, cur, up=True)}"
        if used < left:
            return _held_in_flight(
                "credits",
                f"prepaid credit of customer {pol.customer!r}: {figures}",
                "credits",
                f" ({money(held, cur, up=True)})",
            )
        if held:
            figures += f", {money(held, cur, up=True)} held by calls in flight"
        return Refusal(
            "credits",
            f"Meterline: prepaid credit of customer {pol.customer!r} is used up ({figures}); "
            "add credits to continue.",
            "credits",
            None,
        )

    def release(self, reservation: Reservation) -> None:
        for key, units in reservation.parts:
            left = self.reserved.get(key, 0) - units
            if left > 0:
                self.reserved[key] = left
            else:
                self.reserved.pop(key, None)
        for cf, units in reservation.flights:
            left = self.in_flight.get(cf, 0) - units
            if left > 0:
                self.in_flight[cf] = left
            else:
                self.in_flight.pop(cf, None)
        reservation.parts = []
        reservation.flights = []

    def record(
        self,
        pol: CustomerPolicy,
        event_id: str,
        provider: str,
        model: str,
        by_type: dict[str, int],
        at: datetime,
        service_tier: str | None = None,
        *,
        speed: str | None = None,
        inference_geo: str | None = None,
    ) -> None:
        """Count one of this proxy's own events (pending until a snapshot holds it);
        ``service_tier``, ``speed``, ``inference_geo``: how it was served (``None``: not
        reported), which decides the accounts that count it (:mod:`meterline.served`)."""
        contributions = []
        served = Served(service_tier, speed, inference_geo)
        for acct, types in pol.matching(provider, model).counted:
            if not acct.meter.counts_served(served):
                continue
            units = sum(by_type.get(t, 0) for t in types)
            if units:
                key = acct.current(at)[1]
                contributions.append((key, units))
                self.pending_sum[key] = self.pending_sum.get(key, 0) + units
        if contributions:
            self.pending[event_id] = contributions

    # ------------------------------------------------------------------ refreshing

    def apply(self, snap: Snapshot) -> None:
        """Take a snapshot: stored figures replace the old ones; seen events leave pending."""
        written, self._own_written = self._own_written, None
        for event_id in snap.seen_pending:
            # Stored now, so counted there: out of what was written as well, if it was.
            moved = written is not None and event_id in self._pending_written
            for key, units in self.pending.pop(event_id, ()):
                left = self.pending_sum.get(key, 0) - units
                if left > 0:
                    self.pending_sum[key] = left
                else:
                    self.pending_sum.pop(key, None)
                if moved and written is not None:
                    written[key] = written.get(key, 0) - units
        self.stored = snap.stored
        by_account: dict[tuple[str, str, str, datetime], list[Key]] = {}
        for key in snap.stored:
            by_account.setdefault(key[:4], []).append(key)
        self._by_account = by_account
        self.balances = snap.balances
        self.unit_balances = snap.unit_balances
        self._balances = {k: Fraction(v) for k, v in snap.balances.items()}
        self.grants_left = snap.grants_left
        self.peers = snap.peers
        self.snapshot_at = snap.taken_at
        if self.fleet_size > 1:
            if written is None:  # no write before this read (its first, or a failed one)
                written = {key: self._own(key) for key in (*self.pending_sum, *self.reserved)}
            self._own_at_snapshot = written
            self._own_demand = self._demand_written
            self._shares = {}
        elif self._own_at_snapshot:
            self._own_at_snapshot = {}

    def pending_ids(self) -> list[str]:
        return list(self.pending)
