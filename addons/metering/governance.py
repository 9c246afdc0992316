"""Entitlement enforcement in the proxy: admit, reserve, settle; refresh from the store.

The :class:`Meter` addon calls four methods:

- :meth:`Governance.check` in the ``request`` hook, before the request is forwarded:
  dictionary lookups and integer sums on in-memory counters (no I/O, no lock). It
  returns a refusal in the provider's own error shape, or reserves the call's estimate
  (:mod:`addons.metering.reserve`) on every account the call adds to;
- :meth:`Governance.finish` when the call's event is recorded: the reservation is
  released and the metered tokens counted (a stream that crossed a limit mid-way was
  let finish: all of it counts); a call with no response only releases, and so does a
  background response's POST (:mod:`addons.metering.background`: its usage is counted
  when a read shows its end; reads are not checked, they start no work);
- :meth:`Governance.use_catalog` on every catalog (re)load;
- :meth:`Governance.start` / :meth:`Governance.stop` with the proxy.

A daemon thread re-reads the store every ``meter_governance_refresh`` seconds (every
proxy's events of the current periods, this proxy's pending events found there, credit
balances: :mod:`addons.metering.storereads`) and hands the snapshot to the event loop
(:mod:`meterline.entitlements`). What an admitted call asked is compared with what served
it at its end (:mod:`addons.metering.servedasasked`).
The first read runs on that thread too, never on the event loop (it waits for the
store, which another process may hold locked for minutes): until it ends, calls a hard
limit or a prepaid balance could refuse wait for it (:meth:`Governance.first_read`, the
loop free), at most :data:`FIRST_READ_WAIT_S`. If it fails, or has not ended by then,
``meter_governance_failure`` decides: ``allow`` counts from zero (this proxy's own calls
since start, and the events an earlier run left in the spool) until a read succeeds,
``deny`` refuses governed calls (503) until then, and again whenever reads have failed
for :data:`STALE_READS` refresh intervals, or none has ended for :data:`HUNG_READ_S` more
(an outage while the proxy runs: a fleet's other proxies' calls are unseen meanwhile).
A counter the store was never read for (a policy change adds it) refuses with a
retryable 503 until the next read, which the change triggers.

An error inside governance (a bug, a catalog the period maths cannot serve) never costs
an event and never forwards a call its plan could refuse: :meth:`Governance.check`
refuses the calls of a customer whose plan can refuse (503 ``unavailable``) and lets the
others through (soft and unlimited limits refuse nothing); :meth:`Governance.finish`
still releases what it can. Each kind of error is logged once, on one line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

from mitmproxy import http

from addons.metering import errors, events
from addons.metering.govoptions import parse_refresh
from addons.metering.reserve import Estimate, estimate_request
from addons.metering.servedasasked import ServedAsAsked
from addons.metering.storereads import StoreReads, ThroughWriter
from addons.metering.usage import Usage
from meterline.catalog import Catalog
from meterline.entitlements import (
    Counters,
    CustomerPolicy,
    Policy,
    Refusal,
    Reservation,
    Snapshot,
    build_policy,
    fleet,
)
from meterline.eventschema import TOKEN_COLUMNS

log = logging.getLogger("meterline.governance")

#: With ``deny``, reads failing for this many refresh intervals (6 s at the default 2 s)
#: refuse governed calls until one succeeds; one failed read (a lock, a blip) does not.
STALE_READS = 3
#: More time a read may take before ``deny`` takes the store as gone (a lake read takes
#: well under a second; one under load a few).
HUNG_READ_S = 10.0
_TOKEN_FIELDS = TOKEN_COLUMNS


def may_govern(catalog: Catalog | None) -> bool:
    """Whether ``catalog`` governs some consumer's calls at any time: a plan with
    entitlements or prepaid credit, or a customer's override (a plan change that starts
    later governs from then on, with no reload)."""
    if catalog is None:
        return False
    return any(p.entitlements or p.prepaid for p in catalog.plans) or any(
        c.entitlements for c in catalog.customers
    )


def _estimate(
    flavor: str, flow: http.HTTPFlow, body: Callable[[], bytes] | None, asked: Estimate | None
) -> Estimate:
    """What a call may cost: ``asked``, else read from its request (``body``: decoded)."""
    if asked is not None:
        return asked
    req = flow.request
    raw = (req.raw_content or b"") if body is None else body()
    return estimate_request(flavor, req.path, raw)


FIRST_READ_WAIT_S = 3.0
"""How long, at most, a call that a limit could refuse waits at start for the first read
of the store; then the failure policy decides (before, the read ran on the event loop:
with the store locked by another process every call hung 27 to 90 s)."""


BACKGROUND_HOLD_S = 3600.0
"""How long a queued background response's reservation is held for the read that shows
its end (a deep-research response runs for tens of minutes; OpenAI keeps them to read)."""


class Governance:
    def __init__(self) -> None:
        self.catalog: Catalog | None = None
        self.policy = build_policy(None, datetime.now(UTC))
        self.counters = Counters()
        self.reads = StoreReads(self.counters)
        self.deny_when_blind = False
        self.ready = False
        """A snapshot of the store has been applied since start."""
        self.blind = False
        """The last read of the store failed (or the first did not end in time)."""
        self.read_ok_at: float | None = None
        """``time.monotonic()`` of the last read applied (None: none since start)."""
        self._first_read: asyncio.Event | None = None
        """Set once the first read at start ended, failed or took too long: calls a limit
        could refuse wait for it (:meth:`first_read`)."""
        self._reservations: dict[str, tuple[CustomerPolicy, Reservation]] = {}
        self.served = ServedAsAsked()
        self._held: dict[str, tuple[float, Reservation]] = {}
        """A queued background response's event id -> (monotonic expiry, the reservation
        of the call that created it), oldest first: its tokens are counted when a read
        shows it ended (:meth:`hold`), or when a store read finds its event (read on
        another proxy)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._instance = f"{os.getpid()}:{secrets.token_hex(4)}"
        self.reads.publisher = f"{socket.gethostname()}:{self._instance}"
        self._errors_seen: set[str] = set()
        self.errors = 0
        """Errors inside governance since start (each kind logged once)."""

    @property
    def publisher(self) -> str:
        """This proxy in the fleet's tables: one per running process, whatever its options."""
        return self.reads.publisher

    @property
    def locator(self) -> str | None:
        return self.reads.locator

    @property
    def refresh_s(self) -> float:
        """Seconds between store reads (``meter_governance_refresh``)."""
        return self.reads.refresh_s

    # ------------------------------------------------------------------ setup

    def configure(
        self,
        refresh: str,
        failure: str,
        locator: str,
        proxy_id: str | None = None,
        share: str = "demand",
    ) -> None:
        reads = self.reads
        reads.publisher = f"{proxy_id or socket.gethostname()}:{self._instance}"
        reads.refresh_s = parse_refresh(refresh)
        self.counters.share = share != "none"
        self.counters.share_even_part = Fraction(1) if share == "even" else fleet.EVEN_PART
        self.deny_when_blind = failure == "deny"
        if reads.locator is not None and locator != reads.locator:
            self._wake.set()
        reads.locator = locator

    def use_catalog(self, catalog: Catalog | None) -> None:
        """New limits apply at once; a store read (new accounts) follows within a moment."""
        self.catalog = catalog
        self.policy = build_policy(catalog, datetime.now(UTC))
        self._wake.set()

    def start(
        self,
        state_dir: Path | None = None,
        through_writer: ThroughWriter | None = None,
        leftovers: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        """Count the spool's leftovers, then read the store from the refresh thread.

        Nothing here waits for the store: the first read runs on the refresh thread (a
        DuckDB file another process holds is waited for there, up to its lock wait),
        while calls a limit could refuse wait for it at most :data:`FIRST_READ_WAIT_S`
        (:meth:`first_read`). ``leftovers``: the events an earlier run left in the spool
        (the writer stores them meanwhile): counted at once as this proxy's pending
        events, as if it had just metered them, so a limit holds them whether the store
        takes them before the read or after (a store that cannot take them: its disk
        full, a lake unreachable, the file locked); a read that finds them stored drops
        them from pending, as for any event.

        The store is read at start whenever the catalog may govern a call, even when no
        consumer is governed yet: a subscription that starts later then finds its first
        period known (the store had nothing of it) instead of waiting for a read."""
        self.reads.open(state_dir, through_writer)
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        if self.policy.by_consumer or may_govern(self.catalog):
            if leftovers is not None:
                self._count(leftovers())
            if self._loop is not None:
                self._first_read = asyncio.Event()
                self._loop.call_later(FIRST_READ_WAIT_S, self._first_read_late)
            self._wake.set()  # the refresh thread reads at once
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="meterline-governance", daemon=True
            )
            self._thread.start()

    def awaits_first_read(self, consumer: str) -> bool:
        """Whether a call of ``consumer`` must wait for the first read of the store: its
        plan refuses on usage (a hard limit, prepaid) and that read is under way."""
        if self._first_read is None or self._first_read.is_set():
            return False
        pol = self.policy.by_consumer.get(consumer)
        return pol is not None and pol.refuses_on_usage

    async def first_read(self) -> None:
        """Until the first read ended (applied or failed) or :data:`FIRST_READ_WAIT_S`
        passed, whichever is first."""
        if self._first_read is not None:
            await self._first_read.wait()

    def _first_read_late(self) -> None:
        """The first read has not ended in time: the failure policy decides from now on."""
        if self.ready or self._first_read is None or self._first_read.is_set():
            return
        log.warning(
            "meterline: usage for limits not read from %s within %.0f s (the store is "
            "locked or slow): %s until it is",
            self.locator,
            FIRST_READ_WAIT_S,
            "governed calls are refused (meter_governance_failure=deny)"
            if self.deny_when_blind
            else "limits count this proxy's own calls from zero (meter_governance_failure=allow)",
        )
        self._blind()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    # ------------------------------------------------------------------ request path

    def _failed(self, what: str, e: Exception) -> None:
        """Log an error inside governance: once per kind, one line, no traceback."""
        self.errors += 1
        kind = f"{what}|{type(e).__name__}|{e}"[:300]
        if kind in self._errors_seen:
            log.debug("meterline: governance %s failed again: %s", what, e)
            return
        if len(self._errors_seen) < 256:
            self._errors_seen.add(kind)
        outcome = (
            "calls of customers whose plan can refuse are refused with 503 until it is fixed"
            if what == "check"
            else "the event is recorded but not counted against limits"
        )
        log.error(
            "meterline: governance %s failed: %s: %s (%s; logged once)",
            what,
            type(e).__name__,
            e,
            outcome,
        )

    def _policy_now(self) -> None:
        """Rebuild the policy once a subscription or override it waited for has begun:
        before a lookup (a consumer no plan governed yet would pass ungoverned until a
        governed one called: 3,000 used at 1,000 after a plan change took effect), and
        before an event is counted (a call admitted just before a subscription began
        ends in its first period: its tokens count there)."""
        until = self.policy.valid_until
        if until is not None and datetime.now(UTC) >= until:
            try:
                self.policy = build_policy(self.catalog, datetime.now(UTC))
            except Exception as e:  # the policy in force stays; a failed check refuses
                self._failed("check", e)
            self._wake.set()  # new accounts (an override, a subscription) are read at once

    def check(
        self,
        consumer: str | None,
        flavor: str,
        provider: str,
        flow: http.HTTPFlow,
        body: Callable[[], bytes] | None = None,
        asked: Estimate | None = None,
        hold: str | None = None,
    ) -> Any:
        """None (not governed), a :class:`Refusal`, or True (admitted, estimate reserved).

        ``body``: gives the request body decoded (a ``Content-Encoding: gzip`` request's
        model and bound are read from it; default: the raw body); called only for a
        governed consumer, so other calls pay nothing for it. ``asked``: what the call
        may cost when it is not read from a body (a WebSocket session's model).
        ``hold``: the id the estimate is reserved under, for :meth:`finish` (default: the
        flow's; a WebSocket's responses, several at once on one socket, each have one).

        Never raises: if the check fails, a call that a hard limit, an allow-list or a
        prepaid balance could refuse is refused (``unavailable``, 503): a hard cap is not
        waived by a bug. Other calls go through, as they would have.
        """
        if consumer is None:
            return None
        self._policy_now()
        pol = self.policy.by_consumer.get(consumer)
        if pol is None:
            if self.policy.upcoming and consumer in self.policy.upcoming:
                try:
                    return self._hold_upcoming(consumer, flavor, provider, flow, body, asked, hold)
                except Exception as e:  # nothing to refuse: the call goes on unheld
                    self._failed("check", e)
            return None
        try:
            return self._check(consumer, flavor, provider, flow, body, asked, hold)
        except Exception as e:
            self._failed("check", e)
            pol = self.policy.by_consumer.get(consumer, pol)
            if not pol.can_refuse:
                return None
            return Refusal(
                "unavailable",
                "Meterline: usage limits cannot be checked (an internal error, logged by the "
                "proxy); calls are refused until it is fixed.",
                "unavailable",
                30,
            )

    def check_session(
        self,
        consumer: str | None,
        flavor: str,
        provider: str,
        flow: http.HTTPFlow,
        model: str | None,
    ) -> Refusal | None:
        """A WebSocket session about to open (a Realtime, Gemini Live or Responses socket):
        refused when no call of the consumer's to ``provider`` could pass now (its
        subscription ended, a hard limit that applies to every model reached, prepaid
        credit used up), or when ``model`` is known and the plan does not include it.
        Holds nothing: each response is checked and counted on its own."""
        if consumer is None:
            return None
        verdict = self.check(consumer, flavor, provider, flow, asked=Estimate(model or "", 0, 0))
        if verdict is True:
            self.finish(flow.id, None)
            return None
        if not isinstance(verdict, Refusal):
            return None
        pol = self.policy.by_consumer.get(consumer)
        if model is None and verdict.kind == "not_granted" and pol and pol.inactive is None:
            return None  # the model is named later, on the socket: checked per response
        return verdict

    def _check(
        self,
        consumer: str,
        flavor: str,
        provider: str,
        flow: http.HTTPFlow,
        body: Callable[[], bytes] | None,
        asked: Estimate | None = None,
        hold: str | None = None,
    ) -> Any:
        now = datetime.now(UTC)
        pol = self.policy.by_consumer.get(consumer)
        if pol is None:
            return None
        # Before the store is read, only a plan that refuses on usage waits for it: soft
        # and unlimited limits refuse nothing, whatever the store holds, and a plan's
        # allowed models or an ended subscription do not depend on it.
        if pol.refuses_on_usage and (self.blind or not self.ready or self.deny_when_blind):
            # deny: reads failing, or hanging (a store that answers nothing fails nothing)
            if self.deny_when_blind and (self.blind or self.ready) and self._stale():
                return Refusal(
                    "unavailable",
                    "Meterline: usage limits cannot be checked (the store cannot be read); "
                    "calls are refused until it can.",
                    "unavailable",
                    30,
                )
            if not self.ready and not self.counters.unread_as_zero:
                # Never read yet, and no read has failed either (governed since a reload).
                return Refusal(
                    "unavailable",
                    "Meterline: usage limits are being read from the store; retry in a moment.",
                    "unavailable",
                    1,
                    retry=True,
                )
        if self._held:
            self._expire()
        est = _estimate(flavor, flow, body, asked)
        # A name the provider resolves (an Azure deployment, an alias) is held against
        # the limits of every model it was billed as too.
        billed = self.served.billed_as.get(provider, est.model)
        tier = self.served.tier(pol, provider, body)
        standard = self.served.standard_speed(pol, provider, body)
        decision = self.counters.admit(
            pol, provider, est.model, est.input, est.output, now, billed, est.searches, tier,
            standard,
        )  # fmt: skip
        if isinstance(decision, Reservation):
            nxt = self.policy.upcoming.get(consumer) if self.policy.upcoming else None
            if nxt is not None:  # a policy about to begin: its accounts hold the call too
                more = self.counters.reserve(
                    consumer, nxt.matching_billed(provider, est.model, billed),
                    est.input, est.output, now, est.searches,
                )  # fmt: skip
                decision.parts += more.parts
                decision.flights += more.flights
            held_as = flow.id if hold is None else hold
            self._keep(pol, decision, held_as)
            self.served.admitted(held_as, provider, est.model, tier, standard)
            return True
        return decision

    def _keep(self, pol: CustomerPolicy, reservation: Reservation, held_as: str) -> None:
        """Hold ``reservation`` under ``held_as`` until :meth:`finish` (or :meth:`hold`)."""
        if reservation.parts:
            self._reservations[held_as] = (pol, reservation)

    def _hold_upcoming(
        self,
        consumer: str,
        flavor: str,
        provider: str,
        flow: http.HTTPFlow,
        body: Callable[[], bytes] | None,
        asked: Estimate | None,
        hold: str | None,
    ) -> Any:
        """A consumer governed by no policy now, but by one that begins later
        (:attr:`Policy.upcoming`): nothing refuses the call; its estimate is held on
        that policy's accounts, so that if it is still in flight when the policy begins,
        the calls admitted then count it. None if it holds nothing."""
        nxt = self.policy.upcoming[consumer]
        est = _estimate(flavor, flow, body, asked)
        billed = self.served.billed_as.get(provider, est.model)
        matched = nxt.matching_billed(provider, est.model, billed)
        if not matched.counted:
            return None
        now = datetime.now(UTC)
        reservation = self.counters.reserve(
            consumer, matched, est.input, est.output, now, est.searches
        )
        if not reservation.parts:
            return None
        held_as = flow.id if hold is None else hold
        self._keep(nxt, reservation, held_as)
        self.served.admitted(held_as, provider, est.model, None, False)
        return True

    def refuse(
        self,
        flow: http.HTTPFlow,
        provider: tuple[str, str],
        who: tuple[str | None, str | None],
        refusal: Refusal,
        proxy_id: str | None,
        request_body: bytes | None = None,
    ) -> dict[str, Any]:
        """Answer ``flow`` with the provider-shaped error; returns the event to record.

        ``provider``: (name, flavor); ``who``: (consumer, key fingerprint);
        ``request_body``: decoded (default: as sent), to name the model the call asked for.
        """
        name, flavor = provider
        now = datetime.now(UTC).timestamp()
        exchange = events.Exchange(
            provider=name,
            flavor=flavor,
            method=flow.request.method,
            host=flow.request.pretty_host,
            path=flow.request.path,
            consumer=who[0],
            key_fingerprint=who[1],
            t_request=now,
            t_done=now,
        )
        status, body = errors.error_body(flavor, refusal.kind, refusal.message)  # type: ignore[arg-type]
        headers = {
            "content-type": "application/json",
            "x-meterline": refusal.reason,
            # Waiting a few seconds would not help: SDKs that honour it do not retry.
            "x-should-retry": "false",
        }
        if refusal.retry:  # a counter being read, or calls in flight about to settle
            headers["x-should-retry"] = "true"
        if refusal.retry_after is not None:
            headers["retry-after"] = str(refusal.retry_after)
        flow.response = http.Response.make(status, body, headers)
        exchange.status = status
        raw = (flow.request.raw_content or b"") if request_body is None else request_body
        model = estimate_request(flavor, flow.request.path, raw).model
        event = events.build_event(exchange, Usage(model=model or None), proxy_id)
        event["reason"] = refusal.reason
        return event

    # ------------------------------------------------------------------ settling

    def finish(self, flow_id: str, rows: list[dict[str, Any]] | None) -> None:
        """Release the call's reservation; count its metered events (``rows``) if any.

        Never raises (the caller records the events next, whatever happens here).
        """
        held = self._reservations.pop(flow_id, None)
        if held is not None:
            self.counters.release(held[1])
        self.served.ended(flow_id, rows or [], self.policy)
        if self._held:
            for row in rows or ():  # a background response read to its end: counted now
                queued = self._held.pop(row["event_id"], None)
                if queued is not None:
                    self.counters.release(queued[1])
            self._expire()
        self._count(rows or [])

    def hold(self, flow_id: str, event_id: str) -> None:
        """The call created a background response, queued: its tokens are billed when a
        read shows it ended (another flow, minutes later), so its reservation is kept
        until then, at most :data:`BACKGROUND_HOLD_S` (before, it was released at once:
        20 sequential background calls of 200 were all admitted at a limit of 1,000)."""
        held = self._reservations.pop(flow_id, None)
        self.served.forget(flow_id)
        if held is None:
            return
        earlier = self._held.pop(event_id, None)
        if earlier is not None:
            self.counters.release(earlier[1])
        self._held[event_id] = (time.monotonic() + BACKGROUND_HOLD_S, held[1])
        self._expire()

    def _expire(self) -> None:
        """Release the holds of background responses never read to their end in time."""
        now = time.monotonic()
        while self._held:
            event_id, (expires, reservation) = next(iter(self._held.items()))
            if expires > now:
                return
            del self._held[event_id]
            self.counters.release(reservation)

    def _count(self, rows: list[dict[str, Any]]) -> None:
        """Count metered events against their consumer's limits (pending until stored)."""
        if rows:
            self._policy_now()
        for event in rows or ():
            consumer = event.get("consumer")
            pol = self.policy.by_consumer.get(consumer) if consumer else None
            if pol is None or event["event_id"] in self.counters.pending:
                continue  # a background response read again: counted once (its id is fixed)
            try:
                by_type = {t: int(event.get(col) or 0) for t, col in _TOKEN_FIELDS.items()}
                at = datetime.fromisoformat(event["ts"]).replace(tzinfo=UTC)
                self.counters.record(
                    pol,
                    event["event_id"],
                    event["provider"],
                    event["model"] or "",
                    by_type,
                    at,
                    event.get("service_tier"),
                    speed=event.get("speed"),
                    inference_geo=event.get("inference_geo"),
                )
            except Exception as e:
                self._failed("counting an event", e)

    # ------------------------------------------------------------------ refreshing

    def _policy_for_read(self) -> Policy:
        """The policy in force now (on the reading thread): the event loop rebuilds its
        own only when a call comes, so a read just after a subscription began used the
        one before it, and its snapshot, taken after the start, lacked the new counters:
        the first call then got a 503 "being read" until the next read."""
        policy = self.policy
        now = datetime.now(UTC)
        if policy.valid_until is not None and now >= policy.valid_until:
            try:
                return build_policy(self.catalog, now)
            except Exception:  # the loop's own rebuild logs it
                return policy
        return policy

    def _looked_for(self) -> list[str]:
        """The event ids a store read checks for (from the reading thread): this proxy's
        own events not seen stored yet, and the held background responses, read to their
        end on another proxy when the store holds their event."""
        try:
            held = list(self._held)
        except RuntimeError:  # changed on the event loop meanwhile: next read
            held = []
        return [*self.counters.pending_ids(), *held]

    def _apply(self, snap: Snapshot) -> None:
        for event_id in snap.seen_pending & self._held.keys():  # stored by another read
            self.counters.release(self._held.pop(event_id)[1])
        self.counters.apply(snap)
        self.counters.unread_as_zero = False
        self.blind = False
        self.read_ok_at = time.monotonic()
        if self._first_read is not None:
            self._first_read.set()
        if not self.ready:
            log.info(
                "meterline: usage limits enforced from the store (%d counters)", len(snap.stored)
            )
        self.ready = True

    def _stale(self) -> bool:
        """The figures are too old for ``deny`` to trust: never read since start, no read
        applied for :data:`STALE_READS` refresh intervals while reads fail, or for
        :data:`HUNG_READ_S` more while a read hangs (a server that stopped answering: the
        read neither ends nor fails). In a fleet, the others' calls since then are
        unseen: with the last figures, each proxy could spend what the limit had left on
        its own (a 5M cap ended at 12M over a PostgreSQL outage)."""
        ok = self.read_ok_at
        if ok is None:
            return True
        bound = STALE_READS * self.refresh_s
        return time.monotonic() - ok > (bound if self.blind else bound + HUNG_READ_S)

    def _blind(self) -> None:
        """A read failed: with ``allow``, counters never read count from zero meanwhile;
        with ``deny``, calls a limit could refuse are refused until a read succeeds."""
        self.blind = True
        self.counters.unread_as_zero = not self.deny_when_blind
        if self._first_read is not None:
            self._first_read.set()

    def _wants_read(self) -> bool:
        """A read is needed: a consumer is governed, or none is yet but the catalog may
        govern one later and the store was never read (its first period is then known)."""
        return bool(self.policy.by_consumer) or (not self.ready and may_govern(self.catalog))

    def _run(self) -> None:
        reads = self.reads
        while not self._stop.is_set():
            wait = self.refresh_s
            if reads.shared:  # the fleet's rounds (see fleet.until_round)
                wait = fleet.until_round(time.time(), self.refresh_s)
            self._wake.wait(wait)
            self._wake.clear()
            if self._stop.is_set() or not self._wants_read():
                continue
            snap = reads.read(self._policy_for_read(), self._looked_for)
            loop = self._loop
            if loop is not None and not loop.is_closed():
                try:
                    if snap is not None:
                        loop.call_soon_threadsafe(self._apply, snap)
                    else:
                        loop.call_soon_threadsafe(self._blind)
                except RuntimeError:  # the loop closed meanwhile
                    break
            reads.write_state(snap)
            if snap is not None:
                reads.save_sums()
        reads.leave()
