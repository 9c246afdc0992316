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

Only the event loop calls :class:`Counters` methods; a refresh thread builds a
:class:`Snapshot` and hands it over with :meth:`Counters.apply` on the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

from meterline.entitlements.policy import Account, CustomerPolicy, Key, Matched
from meterline.periods import Period

RefusalKind = str
"""``limit`` (429), ``credits`` (429), ``not_granted`` (403), ``unavailable`` (503)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    kind: RefusalKind
    message: str
    reason: str
    """Short code stored in the event's ``reason`` column: ``limit:<feature>``..."""
    retry_after: int | None = None
    """Seconds until the period resets (the limit frees up), if known."""


@dataclass(slots=True)
class Reservation:
    customer: str
    parts: list[tuple[Key, int]]


@dataclass(slots=True)
class Snapshot:
    """What the store held for the current periods, read off the request path."""

    stored: dict[Key, int]
    seen_pending: set[str]
    """Pending event ids found in the store."""
    balances: dict[str, Decimal]
    """Credit balance per customer (grants not expired, minus what invoices consumed)."""
    taken_at: datetime
    unit_balances: dict[tuple[str, str], int] = field(default_factory=dict)
    """Unit grants left per (customer, feature): added to that feature's hard limits."""


@dataclass
class Counters:
    stored: dict[Key, int] = field(default_factory=dict)
    pending: dict[str, list[tuple[Key, int]]] = field(default_factory=dict)
    pending_sum: dict[Key, int] = field(default_factory=dict)
    reserved: dict[Key, int] = field(default_factory=dict)
    balances: dict[str, Decimal] = field(default_factory=dict)
    snapshot_at: datetime | None = None
    unit_balances: dict[tuple[str, str], int] = field(default_factory=dict)
    _balances: dict[str, Fraction] = field(default_factory=dict)

    def period(self, acct: Account, at: datetime) -> Period:
        return acct.current(at)[0]

    # ------------------------------------------------------------------ reading

    def used(self, key: Key) -> int:
        return self.stored.get(key, 0) + self.pending_sum.get(key, 0)

    def committed(self, key: Key) -> int:
        return self.stored.get(key, 0) + self.pending_sum.get(key, 0) + self.reserved.get(key, 0)

    def cost_bound(self, pol: CustomerPolicy, at: datetime, *, with_reserved: bool) -> Fraction:
        total = Fraction(0)
        for cc in pol.cost_cards:
            key = cc.account.current(at)[1]
            units = self.committed(key) if with_reserved else self.used(key)
            total += cc.bound.cost(units)
        return total

    # ------------------------------------------------------------------ deciding

    def admit(
        self,
        pol: CustomerPolicy,
        provider: str,
        model: str,
        input_bound: int,
        output_bound: int,
        now: datetime,
    ) -> Refusal | Reservation:
        """Refuse, or reserve the estimate on every account the call adds to."""
        matched: Matched = pol.matching(provider, model)
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
            used = self.committed(key)
            granted = self.unit_balances.get((pol.customer, acct.feature), 0)
            if used >= lim.limit + granted:
                retry = max(1, int((period.end - now).total_seconds()) + 1)
                return Refusal(
                    "limit",
                    f"Meterline: {lim.source} limit of {lim.limit} {acct.feature} units per "
                    f"period{f' (+{granted} granted)' if granted else ''} reached "
                    f"({used} used or in flight); it resets at "
                    f"{period.end:%Y-%m-%dT%H:%M:%SZ}.",
                    f"limit:{acct.feature}",
                    retry,
                )
        if pol.prepaid:
            balance = self.balances.get(pol.customer, Decimal(0))
            cost = self.cost_bound(pol, now, with_reserved=True)
            if self._balances.get(pol.customer, 0) <= cost:
                end = pol.cost_cards[0].account.current(now)[0].end if pol.cost_cards else None
                return Refusal(
                    "credits",
                    f"Meterline: prepaid credit of customer {pol.customer!r} is used up "
                    f"(balance {balance} {pol.currency}, period cost so far "
                    f"{float(cost):.2f} {pol.currency}); add credits to continue.",
                    "credits",
                    max(1, int((end - now).total_seconds()) + 1) if end else None,
                )
        parts: list[tuple[Key, int]] = []
        reserved = self.reserved
        for acct, types in matched.counted:
            # One input bound for input, cached input and cache writes together.
            units = (output_bound if "output" in types else 0) + (
                input_bound if len(types) > ("output" in types) else 0
            )
            if units:
                key = acct.current(now)[1]
                reserved[key] = reserved.get(key, 0) + units
                parts.append((key, units))
        return Reservation(pol.customer, parts)

    def release(self, reservation: Reservation) -> None:
        for key, units in reservation.parts:
            left = self.reserved.get(key, 0) - units
            if left > 0:
                self.reserved[key] = left
            else:
                self.reserved.pop(key, None)
        reservation.parts = []

    def record(
        self,
        pol: CustomerPolicy,
        event_id: str,
        provider: str,
        model: str,
        by_type: dict[str, int],
        at: datetime,
    ) -> None:
        """Count one of this proxy's own events (pending until a snapshot holds it)."""
        contributions = []
        for acct, types in pol.matching(provider, model).counted:
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
        for event_id in snap.seen_pending:
            for key, units in self.pending.pop(event_id, ()):
                left = self.pending_sum.get(key, 0) - units
                if left > 0:
                    self.pending_sum[key] = left
                else:
                    self.pending_sum.pop(key, None)
        self.stored = snap.stored
        self.balances = snap.balances
        self.unit_balances = snap.unit_balances
        self._balances = {k: Fraction(v) for k, v in snap.balances.items()}
        self.snapshot_at = snap.taken_at

    def pending_ids(self) -> list[str]:
        return list(self.pending)
