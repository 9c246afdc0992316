"""Which entitlements apply: the catalog resolved per consumer at an instant.

:func:`build_policy` turns the catalog into one :class:`CustomerPolicy` per consumer of
a customer with a subscription active at ``at``: its metered limits (plan entitlements,
superseded by the customer's overrides), the models it may call (boolean
entitlements), and, for a ``prepaid`` plan, the usage rate cards whose running cost is
held against the credit balance. A customer with no active subscription whose latest
ended subscription was on a plan that can refuse calls (a hard limit, an allow-list,
prepaid) gets an *inactive* policy that refuses every call (403): its plan's limits
would otherwise stop at the subscription's end, and its calls would be forwarded
ungoverned and billed to no one. A customer with no subscription yet (none started, or
none at all) is not governed: metering only. Everything is computed once per catalog and period;
the request path only does dictionary lookups (:meth:`CustomerPolicy.matching`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from meterline.catalog import (
    Catalog,
    Customer,
    Entitlement,
    EntitlementOverride,
    FeatureMeter,
    Plan,
    RateCard,
    Subscription,
)
from meterline.entitlements.cost import CostBound
from meterline.periods import Period, parse_cadence, period_containing
from meterline.served import Served, names_match

INPUT_TYPES = frozenset(
    {"input", "cached_input", "cache_write", "cache_write_1h", "audio_input", "cached_audio_input"}
)
OUTPUT_TYPES = frozenset({"output", "audio_output"})
"""The token types a call's output bound (``max_tokens``, which covers audio) bounds."""

Key = tuple[str, str, str, datetime, datetime]
"""(customer, feature, cadence, anchor, period start): one counter."""


def counter_id(key: Key) -> str:
    """``customer/feature/cadence/period start``: a counter named in state files and reports."""
    customer, feature, cadence, _anchor, start = key
    return f"{customer}/{feature}/{cadence}/{start:%Y-%m-%dT%H:%M:%SZ}"


@dataclass(frozen=True, slots=True)
class Account:
    """Usage of one feature by one customer, per usage period (``cadence`` from ``anchor``)."""

    customer: str
    feature: str
    cadence: str
    anchor: datetime
    meter: FeatureMeter = field(compare=False, hash=False)
    _current: list[tuple[Period, Key]] = field(
        default_factory=list, compare=False, hash=False, repr=False
    )
    """The last period computed and its counter key (period math is slow; asked per call)."""

    def current(self, at: datetime) -> tuple[Period, Key]:
        """The period containing ``at`` and its counter key, cached until it ends."""
        cur = self._current
        if cur:
            found = cur[0]
            if found[0].start <= at < found[0].end:
                return found
        period = self.period(at)
        found = (period, self.key(period))
        cur[:] = [found]
        return found

    @property
    def counts_input(self) -> bool:
        return not INPUT_TYPES.isdisjoint(self.meter.token_types)

    @property
    def counts_output(self) -> bool:
        return not OUTPUT_TYPES.isdisjoint(self.meter.token_types)

    def period(self, at: datetime) -> Period:
        return period_containing(self.anchor, self.cadence, at)

    def key(self, period: Period) -> Key:
        return (self.customer, self.feature, self.cadence, self.anchor, period.start)

    def matches_model(self, provider: str, model: str) -> bool:
        """Whether a call to ``model`` of ``provider`` can add to this account, served at
        whichever tier, speed and geography (a call is admitted before the provider says
        which: a limit on US calls of a model holds every call of that model, one on fast
        calls every call that may run fast, :meth:`Matched.at_standard_speed`)."""
        return any(self.meter.matches(provider, model, t) for t in self.meter.token_types)

    def tokens(self, provider: str, model: str, served: Served, by_type: dict[str, int]) -> int:
        """The units of an event (token counts by type, how it was served: tier, speed,
        geography) this account counts."""
        if not self.meter.counts_served(served):
            return 0
        return sum(n for t, n in by_type.items() if n and self.meter.matches(provider, model, t))


@dataclass(frozen=True, slots=True)
class Limit:
    """A metered entitlement in force: at most ``limit`` units per period (None: unlimited)."""

    account: Account
    limit: int | None
    hard: bool
    source: str
    """``plan <key>`` or ``customer <key>`` (an override)."""


@dataclass(frozen=True, slots=True)
class CostCard:
    """A usage rate card of a prepaid plan and the account its quantity comes from."""

    card: RateCard
    account: Account
    bound: CostBound


@dataclass(slots=True)
class Matched:
    """What a call to one (provider, model) touches for one customer: computed once."""

    allowed: bool
    limits: list[Limit]
    accounts: list[Account]
    """Every account the call adds to (limits' and cost cards')."""
    counted: list[tuple[Account, tuple[str, ...]]]
    """Each account with the token types it counts for this model (globs matched once)."""

    def at_tier(self, tier: str) -> Matched:
        """What a call the request says will be served at ``tier`` touches: the limits and
        accounts of features that count that tier (a flex call does not hold, nor get
        refused by, a limit of the default tier's feature)."""
        return self._only(lambda account: account.meter.counts_tier(tier))

    def at_standard_speed(self) -> Matched:
        """What a call that cannot run fast touches (its request does not ask for fast
        mode): the limits and accounts of features that count standard-speed calls (a
        standard call does not hold, nor get refused by, a ``speed: fast`` feature's)."""
        return self._only(lambda account: names_match("speed", account.meter.speed, "standard"))

    def _only(self, counts: Callable[[Account], bool]) -> Matched:
        """The limits and accounts of the accounts ``counts`` keeps."""
        return Matched(
            self.allowed,
            [lim for lim in self.limits if counts(lim.account)],
            [a for a in self.accounts if counts(a)],
            [(a, types) for a, types in self.counted if counts(a)],
        )


@dataclass(slots=True)
class CustomerPolicy:
    customer: str
    name: str
    currency: str
    consumers: tuple[str, ...]
    plan: str
    subscription: Subscription
    limits: list[Limit]
    allowed: list[FeatureMeter] | None
    """Models the plan grants (boolean entitlements); None: every model."""
    prepaid: bool
    cost_cards: list[CostCard]
    accounts: list[Account]
    inactive: str | None = None
    """Why every call is refused: no subscription is active (see the module docstring)."""
    _matched: dict[tuple[str, str], Matched] = field(default_factory=dict)
    _merged: dict[tuple[str, str, tuple[str, ...]], Matched] = field(default_factory=dict)

    @property
    def tiered(self) -> bool:
        """Whether a feature of the plan counts only some service tiers: then the tier a
        request asks for may decide which of its limits apply."""
        return any(a.meter.service_tier is not None for a in self.accounts)

    @property
    def speed_filtered(self) -> bool:
        """Whether a feature of the plan counts only some speeds: then whether a request
        asks for fast mode decides which of its limits apply."""
        return any(a.meter.speed is not None for a in self.accounts)

    @property
    def can_refuse(self) -> bool:
        """Whether some call of this customer may be refused: no active subscription, a
        hard limit, an allow-list, or a prepaid balance."""
        return bool(
            self.inactive
            or self.prepaid
            or self.allowed is not None
            or any(lim.hard and lim.limit is not None for lim in self.limits)
        )

    @property
    def refuses_on_usage(self) -> bool:
        """Whether a call may be refused for what the store holds (a hard limit or a prepaid
        balance): an allow-list or an ended subscription is decided without it."""
        return self.prepaid or any(lim.hard and lim.limit is not None for lim in self.limits)

    def matching(self, provider: str, model: str) -> Matched:
        found = self._matched.get((provider, model))
        if found is None:
            if len(self._matched) > 4096:
                self._matched.clear()
            allowed = self.allowed is None or any(
                any(m.matches(provider, model, t) for t in m.token_types) for m in self.allowed
            )
            accounts = [a for a in self.accounts if a.matches_model(provider, model)]
            found = self._matched[(provider, model)] = Matched(
                allowed,
                [lim for lim in self.limits if lim.account.matches_model(provider, model)],
                accounts,
                [
                    (
                        a,
                        tuple(
                            t for t in a.meter.token_types if a.meter.matches(provider, model, t)
                        ),
                    )
                    for a in accounts
                ],
            )
        return found

    def matching_billed(self, provider: str, model: str, billed: tuple[str, ...]) -> Matched:
        """What a call naming ``model`` touches when the provider may bill it as any of
        ``billed`` (an alias it resolves: an Azure deployment, ``gpt-4o`` answered as
        ``gpt-4o-2024-08-06``): the limits and accounts of every one of them; whether
        it is allowed stays the named model's."""
        if not billed:
            return self.matching(provider, model)
        found = self._merged.get((provider, model, billed))
        if found is None:
            if len(self._merged) > 4096:
                self._merged.clear()
            own = self.matching(provider, model)
            limits, accounts = list(own.limits), list(own.accounts)
            types = {id(a): list(t) for a, t in own.counted}
            for other in billed:
                m = self.matching(provider, other)
                limits += [lim for lim in m.limits if not any(lim is x for x in limits)]
                for acct, ts in m.counted:
                    if id(acct) not in types:
                        accounts.append(acct)
                        types[id(acct)] = []
                    types[id(acct)] += [t for t in ts if t not in types[id(acct)]]
            counted = [(a, tuple(types[id(a)])) for a in accounts]
            found = Matched(own.allowed, limits, accounts, counted)
            self._merged[(provider, model, billed)] = found
        return found


@dataclass(slots=True)
class Policy:
    """Every governed consumer's policy, valid for instants in ``[built_at, valid_until)``."""

    by_consumer: dict[str, CustomerPolicy]
    by_customer: dict[str, CustomerPolicy]
    built_at: datetime
    valid_until: datetime | None
    upcoming: dict[str, CustomerPolicy] = field(default_factory=dict)
    """By consumer: the accounts of the customer's next policy (at ``valid_until`` or a
    later change) that can refuse on usage and that the policy in force does not hold
    (:func:`upcoming_policy`). A call admitted now holds its estimate on them too, so
    that calls still in flight when that policy begins count against its limits."""

    @property
    def accounts(self) -> list[Account]:
        return [a for p in self.by_customer.values() for a in p.accounts]


def _types(acct: Account, provider: str, model: str) -> tuple[str, ...]:
    return tuple(t for t in acct.meter.token_types if acct.meter.matches(provider, model, t))


def active_subscription(customer: Customer, at: datetime) -> Subscription | None:
    for sub in customer.subscriptions:
        if sub.start <= at and (sub.end is None or at < sub.end):
            return sub
    return None


def _same_period(a: str, b: str) -> bool:
    return parse_cadence(a) == parse_cadence(b)  # P1Y is P12M, P1W is P7D


def _supersedes(
    o: EntitlementOverride, feature: str, period: str, cadence: str, only: bool
) -> bool:
    """Whether override ``o`` supersedes the plan's limit of ``feature`` per ``period``
    (``only``: the plan's one limit of the feature; ``cadence``: the billing period)."""
    if o.feature != feature:
        return False
    if o.period is not None:
        return _same_period(o.period, period)
    return only or _same_period(period, cadence)


def _latest(overrides: list[EntitlementOverride]) -> EntitlementOverride:
    """The override in force among several begun: the one that began last."""
    return max(overrides, key=lambda o: (o.start is not None, o.start or datetime.min))


def _limits(
    catalog: Catalog, customer: Customer, plan: Plan, sub: Subscription, at: datetime
) -> list[Limit]:
    """The plan's metered limits, each superseded by the customer's override of it in
    force at ``at`` (:class:`~meterline.catalog.EntitlementOverride`: the one of its
    ``period``, else of the billing period or the feature's only limit), then the
    overrides that supersede none of them, each a limit of its own."""
    out: list[Limit] = []
    cadence = plan.billing_cadence
    begun = [o for o in customer.entitlements if o.start is None or o.start <= at]
    unused = list(begun)
    metered: list[Entitlement] = [e for e in plan.entitlements if e.type == "metered"]
    for ent in metered:
        period = ent.period or cadence
        only = sum(e.feature == ent.feature for e in metered) == 1

        limit: int | None = None if ent.limit in (None, "unlimited") else int(ent.limit)  # type: ignore[arg-type]
        hard, source = ent.enforcement == "hard", f"plan {plan.key}"
        mine = [o for o in begun if _supersedes(o, ent.feature, period, cadence, only)]
        if mine:
            unused = [o for o in unused if not any(o is m for m in mine)]
            best = _latest(mine)
            limit = None if best.limit == "unlimited" else best.limit  # type: ignore[assignment]
            source = f"customer {customer.key}"
            hard = hard if best.enforcement is None else best.enforcement == "hard"
        meter = catalog.feature(ent.feature).meter
        account = Account(customer.key, ent.feature, period, sub.start, meter)
        out.append(Limit(account, limit, hard, source))
    # Overrides of a feature (or a period of it) the plan leaves open: a limit of their own.
    slots: dict[tuple[str, str], list[EntitlementOverride]] = {}
    for o in unused:
        period = o.period or cadence
        same = next((k for k in slots if k[0] == o.feature and _same_period(k[1], period)), None)
        slots.setdefault(same or (o.feature, period), []).append(o)
    for (feature, period), mine in sorted(slots.items()):
        best = _latest(mine)
        limit = None if best.limit == "unlimited" else best.limit  # type: ignore[assignment]
        meter = catalog.feature(feature).meter
        account = Account(customer.key, feature, period, sub.start, meter)
        out.append(Limit(account, limit, best.enforcement != "soft", f"customer {customer.key}"))
    return out


def customer_policy(catalog: Catalog, customer: Customer, at: datetime) -> CustomerPolicy | None:
    """The policy of ``customer`` at ``at``; None without an active subscription."""
    sub = active_subscription(customer, at)
    if sub is None:
        return None
    plan = catalog.plan(sub.plan)
    limits = _limits(catalog, customer, plan, sub, at)
    booleans = [e for e in plan.entitlements if e.type == "boolean"]
    allowed = None
    if booleans:
        allowed = [catalog.feature(e.feature).meter for e in booleans]
        allowed += [lim.account.meter for lim in limits]
    cost_cards = []
    if plan.prepaid:
        for card in plan.rate_cards:
            if card.feature is not None:
                meter = catalog.feature(card.feature).meter
                acct = Account(customer.key, card.feature, plan.billing_cadence, sub.start, meter)
                cost_cards.append(CostCard(card, acct, CostBound.of(card)))
    accounts: list[Account] = []
    for acct in [lim.account for lim in limits] + [c.account for c in cost_cards]:
        if acct not in accounts:
            accounts.append(acct)
    return CustomerPolicy(
        customer=customer.key,
        name=customer.name,
        currency=customer.currency,
        consumers=tuple(customer.consumers),
        plan=plan.key,
        subscription=sub,
        limits=limits,
        allowed=allowed,
        prepaid=plan.prepaid,
        cost_cards=cost_cards,
        accounts=accounts,
    )


def _governs(plan: Plan) -> bool:
    """Whether the plan can refuse a call: prepaid, an allow-list or a hard limit."""
    return plan.prepaid or any(
        e.type == "boolean" or (e.enforcement == "hard" and e.limit not in (None, "unlimited"))
        for e in plan.entitlements
    )


def inactive_policy(catalog: Catalog, customer: Customer, at: datetime) -> CustomerPolicy | None:
    """The refusing policy of a customer with no active subscription (call it only then)
    whose latest ended subscription is on a plan that can refuse calls, or None."""
    ended = [s for s in customer.subscriptions if s.end is not None and s.end <= at]
    if not ended:
        return None
    sub = max(ended, key=lambda s: s.start)
    if not _governs(catalog.plan(sub.plan)):
        return None
    return CustomerPolicy(
        customer=customer.key,
        name=customer.name,
        currency=customer.currency,
        consumers=tuple(customer.consumers),
        plan=sub.plan,
        subscription=sub,
        limits=[],
        allowed=None,
        prepaid=False,
        cost_cards=[],
        accounts=[],
        inactive=(
            f"Meterline: customer {customer.key!r} has no active subscription (its "
            f"subscription to plan {sub.plan!r} ended at {sub.end:%Y-%m-%dT%H:%M:%SZ}); "
            "calls are refused."
        ),
    )


def _next_change(customer: Customer, at: datetime) -> datetime | None:
    """The first subscription or override boundary after ``at``."""
    times = [s.start for s in customer.subscriptions] + [
        s.end for s in customer.subscriptions if s.end
    ]
    times += [o.start for o in customer.entitlements if o.start]
    later = [t for t in times if t > at]
    return min(later) if later else None


def build_policy(catalog: Catalog | None, at: datetime) -> Policy:
    """Policies of every consumer whose customer has a plan with something to enforce."""
    by_consumer: dict[str, CustomerPolicy] = {}
    by_customer: dict[str, CustomerPolicy] = {}
    valid_until: datetime | None = None
    upcoming: dict[str, CustomerPolicy] = {}
    for customer in catalog.customers if catalog else []:
        change = _next_change(customer, at)
        if change is not None and (valid_until is None or change < valid_until):
            valid_until = change
        pol = customer_policy(catalog, customer, at)  # type: ignore[arg-type]
        if pol is None:
            pol = inactive_policy(catalog, customer, at)  # type: ignore[arg-type]
        elif not (pol.limits or pol.allowed is not None or pol.prepaid):
            pol = None
        if change is not None and (pol is None or pol.inactive is None):
            nxt = upcoming_policy(catalog, customer, change, pol)  # type: ignore[arg-type]
            if nxt is not None:
                upcoming.update(dict.fromkeys(customer.consumers, nxt))
        if pol is None:
            continue
        by_customer[customer.key] = pol
        for consumer in customer.consumers:
            by_consumer[consumer] = pol
    return Policy(by_consumer, by_customer, at, valid_until, upcoming)


def upcoming_policy(
    catalog: Catalog, customer: Customer, change: datetime, now: CustomerPolicy | None
) -> CustomerPolicy | None:
    """What a call admitted before ``change`` must hold for the policy that begins then.

    Calls in flight are held per customer and feature (:attr:`Counters.in_flight`), but
    only on the accounts of the policy that admitted them: a customer moving from no
    limits (no subscription, or a plan without limits) to a capped plan had its calls in
    flight at the switch unheld, and calls admitted after it passed on top of them (2,500
    used at a cap of 500 in a probe). The result holds only the next policy's accounts
    whose features ``now`` does not hold, and only if that policy can refuse on usage; it
    refuses nothing itself (no limits)."""
    nxt = customer_policy(catalog, customer, change)
    if nxt is None or not nxt.refuses_on_usage:
        return None
    held = {a.feature for a in now.accounts} if now is not None else set()
    accounts = [a for a in nxt.accounts if a.feature not in held]
    if not accounts:
        return None
    return CustomerPolicy(
        customer=nxt.customer,
        name=nxt.name,
        currency=nxt.currency,
        consumers=nxt.consumers,
        plan=nxt.plan,
        subscription=nxt.subscription,
        limits=[],
        allowed=None,
        prepaid=False,
        cost_cards=[],
        accounts=accounts,
    )
