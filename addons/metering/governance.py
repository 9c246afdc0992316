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
balances) and hands the snapshot to the event loop (:mod:`meterline.entitlements`).
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
import contextlib
import hashlib
import json
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

import duckdb
from mitmproxy import exceptions, http

from addons.metering import errors, events
from addons.metering.billedas import BilledAs
from addons.metering.reserve import (
    Estimate,
    asks_standard_speed,
    estimate_request,
    requested_tier,
)
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
    fleetsums,
    read_snapshot,
)
from meterline.entitlements.policy import counter_id
from meterline.entitlements.windowsums import KeptSums
from meterline.eventschema import EVENT_COLUMNS, TOKEN_COLUMNS
from meterline.lakerepair import metadata_alias
from meterline.served import canonical
from meterline.servicetiers import REQUESTABLE_TIERS
from meterline.store import LAKE_PREFIX, open_store, store

log = logging.getLogger("meterline.governance")

FAILURE_POLICIES = ("allow", "deny")
SHARE_POLICIES = ("demand", "even", "none")
#: With ``deny``, reads failing for this many refresh intervals (6 s at the default 2 s)
#: refuse governed calls until one succeeds; one failed read (a lock, a blip) does not.
STALE_READS = 3
#: More time a read may take before ``deny`` takes the store as gone (a lake read takes
#: well under a second; one under load a few).
HUNG_READ_S = 10.0
_TOKEN_FIELDS = TOKEN_COLUMNS
_METADATA = metadata_alias()


def may_govern(catalog: Catalog | None) -> bool:
    """Whether ``catalog`` governs some consumer's calls at any time: a plan with
    entitlements or prepaid credit, or a customer's override (a plan change that starts
    later governs from then on, with no reload)."""
    if catalog is None:
        return False
    return any(p.entitlements or p.prepaid for p in catalog.plans) or any(
        c.entitlements for c in catalog.customers
    )


def add_options(loader: Any) -> None:
    loader.add_option(
        "meter_governance_refresh",
        str,  # mitmproxy cannot parse float options from --set
        "2.0",
        "Seconds between re-reads of entitlement usage and credit balances from the store "
        "(the fleet's overshoot bound grows with it).",
    )
    loader.add_option(
        "meter_governance_failure",
        str,
        "allow",
        "When usage cannot be read from the store at start: 'allow' (enforce limits on this "
        "proxy's own calls only, counted from zero, until it can) or 'deny' (refuse governed "
        "calls with 503 until it can; also once reads have failed for three refresh "
        "intervals while running).",
        choices=FAILURE_POLICIES,
    )
    loader.add_option(
        "meter_governance_share",
        str,
        "demand",
        "How a fleet's proxies on one lake divide what a hard limit has left between two "
        "refreshes: 'demand' (each admits its share, the call that crosses the last: a "
        "fifth of the rest split evenly, the remainder by what each proxy's calls asked in "
        "the round before), 'even' (1/n of the rest each) or 'none' (each may admit all "
        "of it: up to n times the rest in one refresh interval).",
        choices=SHARE_POLICIES,
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


def _dump(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


#: Where the kept window sums are saved (the spool directory), and how often at most.
SUMS_FILE = "governance-sums.json"
SUMS_EVERY_S = 30.0


def _load_sums(path: Path | None) -> dict[str, Any] | None:
    """The kept sums an earlier run saved (None: none, or a file that does not parse:
    the first read is then whole, as without one)."""
    if path is None:
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _store_id(locator: str, inode: int) -> str:
    """Which store kept sums belong to, without the locator's text (it may hold a
    PostgreSQL password)."""
    return hashlib.sha256(f"{locator}\0{inode}".encode()).hexdigest()


def parse_refresh(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not MIN_REFRESH_S <= value <= 3600:  # 1e-300 kept an idle proxy reading the store
        raise exceptions.OptionsError(
            f"meter_governance_refresh: expected seconds from {MIN_REFRESH_S} to 3600, got {text!r}"
        )
    return value


MIN_REFRESH_S = 0.1
"""The shortest refresh interval: each read of the store takes milliseconds of CPU."""


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
        self.refresh_s = 2.0
        self.deny_when_blind = False
        self.ready = False
        """A snapshot of the store has been applied since start."""
        self.blind = False
        """The last read of the store failed (or the first did not end in time)."""
        self.read_ok_at: float | None = None
        """``time.monotonic()`` of the last read applied (None: none since start)."""
        self._read_warned: float | None = None
        """When a failed read was last logged (reads failing: once a minute)."""
        self._first_read: asyncio.Event | None = None
        """Set once the first read at start ended, failed or took too long: calls a limit
        could refuse wait for it (:meth:`first_read`)."""
        self.locator: str | None = None
        self._reservations: dict[str, tuple[CustomerPolicy, Reservation]] = {}
        self.billed_as = BilledAs()
        self._warned_names: set[tuple[str, str, str, str]] = set()
        """(feature, provider, asked, billed) pairs warned about (at most 256 kept)."""
        """Per provider, the models calls naming a model were billed as (an alias)."""
        self._asked: dict[str, tuple[str, str]] = {}
        """Admitted flow id -> (provider, model it names): learnt from at its end."""
        self._tier_asked: dict[str, tuple[str, str]] = {}
        """Admitted flow id -> (provider, the service tier it asked for and was checked
        at): compared with the tier that served it, at its end."""
        self._standard_asked: dict[str, str] = {}
        """Admitted flow id -> provider, for a call checked as one that cannot run fast:
        compared with the speed it ran at, at its end."""
        self._speed_not_kept: set[str] = set()
        """Providers seen running fast a call that did not ask for it."""
        self._tiers_not_kept: set[tuple[str, str]] = set()
        """(provider, tier) a request asked for and was served otherwise: from then on
        such a request meets every limit of its model (the tier is not a promise)."""
        self._held: dict[str, tuple[float, Reservation]] = {}
        """A queued background response's event id -> (monotonic expiry, the reservation
        of the call that created it), oldest first: its tokens are counted when a read
        shows it ended (:meth:`hold`), or when a store read finds its event (read on
        another proxy)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.state_path: Path | None = None
        self._lake: tuple[str, duckdb.DuckDBPyConnection] | None = None
        self._kept: tuple[tuple[str, int], KeptSums] | None = None
        self._read_ms = 0.0
        self._sums_path: Path | None = None
        self._sums_saved = 0.0
        self._restored: dict[str, Any] | None = None
        """The kept sums an earlier run saved, for the first read of the same store."""
        self._shared = False
        """The lake's proxies share their calls in flight (:mod:`meterline.entitlements.fleet`)."""
        self._shares_sums = False
        """... and their settled sums (:mod:`meterline.entitlements.fleetsums`)."""
        self._sums_shared_at: float | None = None
        self._publish_warned: float | None = None
        self._instance = f"{os.getpid()}:{secrets.token_hex(4)}"
        self.publisher = f"{socket.gethostname()}:{self._instance}"
        """This proxy in the fleet's table of calls in flight (one running process)."""
        self._through_writer: Callable[[Callable[[duckdb.DuckDBPyConnection], Any]], Any] | None
        self._through_writer = None
        """The writer's connection: a DuckDB file can be open only once per process."""
        self._errors_seen: set[str] = set()
        self.errors = 0
        """Errors inside governance since start (each kind logged once)."""
        """``governance.json``: reservations in flight, for ``billing entitlements``."""

    # ------------------------------------------------------------------ setup

    def configure(
        self,
        refresh: str,
        failure: str,
        locator: str,
        proxy_id: str | None = None,
        share: str = "demand",
    ) -> None:
        self.publisher = f"{proxy_id or socket.gethostname()}:{self._instance}"
        self.refresh_s = parse_refresh(refresh)
        self.counters.share = share != "none"
        self.counters.share_even_part = Fraction(1) if share == "even" else fleet.EVEN_PART
        self.deny_when_blind = failure == "deny"
        if self.locator is not None and locator != self.locator:
            self._wake.set()
        self.locator = locator

    def use_catalog(self, catalog: Catalog | None) -> None:
        """New limits apply at once; a store read (new accounts) follows within a moment."""
        self.catalog = catalog
        self.policy = build_policy(catalog, datetime.now(UTC))
        self._wake.set()

    def start(
        self,
        state_dir: Path | None = None,
        through_writer: Callable[[Callable[[duckdb.DuckDBPyConnection], Any]], Any] | None = None,
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
        self.state_path = state_dir / "governance.json" if state_dir else None
        self._sums_path = state_dir / SUMS_FILE if state_dir else None
        self._restored = _load_sums(self._sums_path)
        self._through_writer = through_writer
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
        billed = self.billed_as.get(provider, est.model)
        tier = self._asked_tier(pol, provider, body)
        standard = self._standard_speed(pol, provider, body)
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
            self._keep(pol, decision, flow, hold, provider, est.model)
            if tier is not None:
                self._tier_asked[flow.id if hold is None else hold] = (provider, tier)
            if standard:
                self._standard_asked[flow.id if hold is None else hold] = provider
            return True
        return decision

    def _asked_tier(
        self, pol: CustomerPolicy, provider: str, body: Callable[[], bytes] | None
    ) -> str | None:
        """The service tier the call asks for, when it decides which limits apply: one a
        provider documents (:data:`~meterline.servicetiers.REQUESTABLE_TIERS`: a made-up
        name, which a lenient server might serve at the standard tier, would spare the
        limits), and one this provider has not been seen to serve as another (OpenAI may
        serve a ``priority`` request at ``default``; a provider that reports no tier
        serves none by name). Else None: every limit of the model applies."""
        if not pol.tiered or body is None:
            return None
        tier = requested_tier(body())
        if tier not in REQUESTABLE_TIERS or (provider, tier) in self._tiers_not_kept:
            return None
        return tier

    def _standard_speed(
        self, pol: CustomerPolicy, provider: str, body: Callable[[], bytes] | None
    ) -> bool:
        """Whether the call is checked as one that cannot run fast: the plan has a
        feature of some speeds only, the request does not ask for fast mode, and this
        provider has not been seen to run such a call fast (a deployment that sets the
        speed itself: then every limit of the model applies)."""
        if not pol.speed_filtered or body is None or provider in self._speed_not_kept:
            return False
        return asks_standard_speed(body())

    def _keep(
        self,
        pol: CustomerPolicy,
        reservation: Reservation,
        flow: http.HTTPFlow,
        hold: str | None,
        provider: str,
        model: str,
    ) -> None:
        held_as = flow.id if hold is None else hold
        if model:
            self._asked[held_as] = (provider, model)
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
        billed = self.billed_as.get(provider, est.model)
        matched = nxt.matching_billed(provider, est.model, billed)
        if not matched.counted:
            return None
        now = datetime.now(UTC)
        reservation = self.counters.reserve(
            consumer, matched, est.input, est.output, now, est.searches
        )
        if not reservation.parts:
            return None
        self._keep(nxt, reservation, flow, hold, provider, est.model)
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
        asked = self._asked.pop(flow_id, None)
        if asked is not None:
            self._learn(asked, rows or [])
        tier = self._tier_asked.pop(flow_id, None) if self._tier_asked else None
        if tier is not None:
            self._check_tier_kept(tier, rows or [])
        standard = self._standard_asked.pop(flow_id, None) if self._standard_asked else None
        if standard is not None:
            self._check_speed_kept(standard, rows or [])
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
        self._asked.pop(flow_id, None)
        self._tier_asked.pop(flow_id, None)
        self._standard_asked.pop(flow_id, None)
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

    def _check_tier_kept(self, asked: tuple[str, str], rows: list[dict[str, Any]]) -> None:
        """A call checked only at the tier it asked for was served at another (or at
        none named): requests for that tier meet every limit from now on (before, every
        request asking ``flex`` but served ``default`` passed the default tier's cap)."""
        provider, tier = asked
        for event in rows:
            served = event.get("service_tier")
            if event.get("reason") is None and (
                not isinstance(served, str) or canonical("service_tier", served.lower()) != tier
            ):
                if asked not in self._tiers_not_kept:
                    self._tiers_not_kept.add(asked)
                    log.info(
                        "meterline: %s served a call asking for tier %r at %r: such calls "
                        "meet every limit of their model from now on",
                        provider,
                        tier,
                        served,
                    )
                return

    def _check_speed_kept(self, provider: str, rows: list[dict[str, Any]]) -> None:
        """A call checked as one that cannot run fast ran fast: from now on every call of
        this provider meets the fast features' limits too."""
        for event in rows:
            speed = event.get("speed")
            if isinstance(speed, str) and speed.lower() == "fast":
                if provider not in self._speed_not_kept:
                    self._speed_not_kept.add(provider)
                    log.info(
                        "meterline: %s ran a call fast that did not ask for fast mode: every "
                        "call meets the fast features' limits from now on",
                        provider,
                    )
                return

    def _learn(self, asked: tuple[str, str], rows: list[dict[str, Any]]) -> None:
        """Note the models a call naming ``asked`` was billed as, if another name."""
        provider, model = asked
        for event in rows:
            billed = event.get("model")
            if isinstance(billed, str) and self.billed_as.learn(provider, model, billed):
                log.info(
                    "meterline: %s bills calls naming %r as %r: limits on either apply to them",
                    provider,
                    model,
                    billed,
                )
                self._warn_unbilled_names(event.get("consumer"), provider, model, billed)

    def _warn_unbilled_names(self, consumer: Any, provider: str, asked: str, billed: str) -> None:
        """A feature that matches the name a call asked for but not the one it is billed
        as (a deployment's or an alias's name in its meter) counts none of its tokens:
        the store, the limits and the invoices read the billed name, so its limit never
        fills. Said once per feature and pair, as the proxy learns the pair."""
        pol = self.policy.by_consumer.get(consumer) if isinstance(consumer, str) else None
        for acct in pol.accounts if pol is not None else ():
            if not acct.matches_model(provider, asked) or acct.matches_model(provider, billed):
                continue
            warned = (acct.feature, provider, asked, billed)
            if warned not in self._warned_names:
                if len(self._warned_names) >= 256:
                    self._warned_names.clear()
                self._warned_names.add(warned)
                log.warning(
                    "meterline: feature %r matches calls naming %r, which %s bills as %r: "
                    "it counts none of their tokens (usage, limits and invoices read the "
                    "billed name), so its limit never fills; give its meter a model that "
                    "matches %r",
                    acct.feature,
                    asked,
                    provider,
                    billed,
                    billed,
                )

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

    def _read(self) -> Snapshot | None:
        policy, locator = self._policy_for_read(), self.locator
        if locator is None:
            return None
        try:
            kept = self._kept_sums(locator)
            if locator.startswith(LAKE_PREFIX):
                # Attaching a DuckLake costs a catalog round trip or more: keep it attached
                # (each read is its own transaction, so it sees the lake's latest snapshot).
                if self._lake is None or self._lake[0] != locator:
                    self._close_lake()
                    self._lake = (locator, open_store(locator, wait_s=5))
                    self._shared = self._share(self._lake[1])
                con = self._lake[1]
                peers = None
                if self._shared:
                    self._publish(con)
                    time.sleep(fleet.read_delay(time.time(), self.refresh_s))
                    peers = self._peer_rows
                now = datetime.now(UTC)
                return read_snapshot(con, policy, now, self._looked_for, peers, kept)
            pending = self._looked_for
            if self._through_writer is not None:
                snap: Snapshot = self._through_writer(
                    lambda con: read_snapshot(con, policy, datetime.now(UTC), pending, kept=kept)
                )
                return snap
            with store(locator, wait_s=5) as con:
                return read_snapshot(con, policy, datetime.now(UTC), pending, kept=kept)
        except Exception as e:  # the store may be down; counters keep their last figures
            self._close_lake()
            self._kept = None  # the next read sums whole windows again
            if _being_migrated(e):
                log.info("meterline: %s is being migrated; limits read again shortly", locator)
            elif self._read_warned is None or time.monotonic() - self._read_warned > 60:
                self._read_warned = time.monotonic()  # once a minute while reads fail
                log.warning("meterline: cannot read usage for limits from %s: %s", locator, e)
            return None

    def _share(self, con: duckdb.DuckDBPyConnection) -> bool:
        """Whether this lake's proxies share what they hold (a PostgreSQL catalog), its
        table created if need be. A role that cannot create it is said once; the fleet's
        limits then see each other's calls only once stored, as before."""
        try:
            if not fleet.is_shared(con, _METADATA):
                return False
            fleet.create_table(con, _METADATA)
        except duckdb.Error as e:
            log.warning(
                "meterline: cannot share calls in flight with the fleet's other proxies "
                "(%s: %s); limits count their calls once stored",
                fleet.TABLE,
                fleet.reason(e),
            )
            return False
        try:
            fleetsums.create_table(con, _METADATA)
            self._shares_sums = True
        except duckdb.Error as e:
            self._shares_sums = False
            log.warning(
                "meterline: cannot share settled sums with the fleet (%s: %s); a proxy "
                "joining it reads whole periods at its first read",
                fleetsums.TABLE,
                fleet.reason(e),
            )
        return True

    def _publish(self, con: duckdb.DuckDBPyConnection) -> None:
        """Write this proxy's calls in flight and events not seen stored (from the
        reading thread: dicts copied in C, no lock). A failure is logged once a minute
        (the read that follows says whether the server answers)."""
        held = self.counters.to_write()
        ttl = fleet.ttl_seconds(self.refresh_s)
        try:
            fleet.publish(con, _METADATA, self.publisher, held, ttl)
        except duckdb.Error as e:
            if self._publish_warned is None or time.monotonic() - self._publish_warned > 60:
                self._publish_warned = time.monotonic()
                log.warning(
                    "meterline: cannot share calls in flight with the fleet: %s",
                    fleet.reason(e),
                )

    def _peer_rows(self, con: duckdb.DuckDBPyConnection) -> list[fleet.Row]:
        """The other proxies' rows, read on a cursor of its own: a failure (the table's
        privileges, a server setting) leaves this read of the lake whole, and the limits
        enforced from it (before, every read failed and the lake's figures went stale)."""
        try:
            with con.cursor() as cur:
                return fleet.read_rows(cur, _METADATA, self.publisher)
        except duckdb.Error as e:
            if self._publish_warned is None or time.monotonic() - self._publish_warned > 60:
                self._publish_warned = time.monotonic()
                log.warning(
                    "meterline: cannot read the fleet's calls in flight: %s", fleet.reason(e)
                )
            return []

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

    def _kept_sums(self, locator: str) -> KeptSums:
        """The window sums kept between reads of this store: new for another store, or
        for a DuckDB file made anew at the same path (its inode changed)."""
        inode = 0
        if not locator.startswith(LAKE_PREFIX):
            with contextlib.suppress(OSError):
                inode = os.stat(locator).st_ino
        if self._kept is None or self._kept[0] != (locator, inode):
            kept = KeptSums(shared=self._fleet_sums if locator.startswith(LAKE_PREFIX) else None)
            self._kept = ((locator, inode), kept)
            restored, self._restored = self._restored, None
            if restored is not None and restored.get("store") == _store_id(locator, inode):
                self._kept[1].restore(restored)
        return self._kept[1]

    def _save_sums(self) -> None:
        """The kept sums, for a restart to take up (every :data:`SUMS_EVERY_S` at most:
        a restart resumes from an older boundary, reading a little more), and in a fleet
        for a joining proxy (every :data:`fleetsums.EVERY_S`). The state (its digest
        serialises every meter) is made once for both."""
        if self._kept is None:
            return
        now = time.monotonic()
        to_spool = self._sums_path is not None and now - self._sums_saved >= SUMS_EVERY_S
        shared_at = self._sums_shared_at
        to_fleet = (
            self._shares_sums
            and self._lake is not None
            and (shared_at is None or now - shared_at >= fleetsums.EVERY_S)
        )
        if not (to_spool or to_fleet):
            return
        state = self._kept[1].state()
        if state is None:
            return
        if to_fleet and self._lake is not None:
            self._sums_shared_at = now
            try:
                fleetsums.write(self._lake[1], _METADATA, self.publisher, state)
            except duckdb.Error as e:
                log.debug("meterline: cannot share settled sums: %s", fleet.reason(e))
        if to_spool and self._sums_path is not None:
            self._sums_saved = now
            try:
                _dump(self._sums_path, {**state, "store": _store_id(*self._kept[0])})
            except OSError as e:
                log.debug("meterline: cannot write %s: %s", self._sums_path, e)

    def _fleet_sums(self, digest: str) -> dict[str, Any] | None:
        """The latest settled sums of ``digest`` a proxy of the fleet wrote (on a cursor of
        its own: the read's transaction goes on whatever this finds)."""
        if not self._shares_sums or self._lake is None:
            return None
        try:
            with self._lake[1].cursor() as cur:
                return fleetsums.latest(cur, _METADATA, digest)
        except (duckdb.Error, ValueError) as e:
            log.debug("meterline: cannot read the fleet's settled sums: %s", e)
            return None

    def _close_lake(self) -> None:
        if self._lake is not None:
            with contextlib.suppress(Exception):
                self._lake[1].close()
            self._lake = None
            self._shared = self._shares_sums = False

    def _write_state(self, snap: Snapshot | None) -> None:
        """Reservations in flight, the time of the last store read (handed to the loop)
        and, in a fleet, the other proxies' figures it held."""
        if self.state_path is None:
            return
        reserved = dict(self.counters.reserved)  # a copy taken in C: no lock needed
        state: dict[str, Any] = {
            "written_at": datetime.now(UTC).isoformat(),
            "refresh_s": self.refresh_s,
            "snapshot_at": snap.taken_at.isoformat() if snap is not None else None,
            "reserved": {counter_id(k): v for k, v in reserved.items()},
        }
        if self._kept is not None:  # how the store reads go (docs/governance.md)
            kept = self._kept[1]
            state["reads"] = {
                "whole": kept.full_reads,
                "recent_only": kept.reads - kept.full_reads,
                "last_ms": round(self._read_ms, 1),
                "after_changes": kept.changed_reads,
                "first_from_fleet": kept.taken_from_fleet,
            }
        if snap is not None and self._shared:
            state["fleet"] = {
                "used": {counter_id(k): v for k, v in snap.peers.used.items()},
                "reserved": {counter_id(k): v for k, v in snap.peers.reserved.items()},
                "demand": {counter_id(k): v for k, v in snap.peers.demand.items()},
                "proxies": 1 + snap.peers.alive,
            }
        try:
            _dump(self.state_path, state)
        except OSError as e:
            log.debug("meterline: cannot write %s: %s", self.state_path, e)

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
        while not self._stop.is_set():
            wait = self.refresh_s
            if self._shared:  # the fleet's rounds (see fleet.until_round)
                wait = fleet.until_round(time.time(), self.refresh_s)
            self._wake.wait(wait)
            self._wake.clear()
            if self._stop.is_set() or not self._wants_read():
                continue
            started = time.monotonic()
            snap = self._read()
            self._read_ms = (time.monotonic() - started) * 1000
            if snap is not None and self._read_warned is not None:
                self._read_warned = None
                log.info("meterline: usage for limits read from the store again")
            loop = self._loop
            if loop is not None and not loop.is_closed():
                try:
                    if snap is not None:
                        loop.call_soon_threadsafe(self._apply, snap)
                    else:
                        loop.call_soon_threadsafe(self._blind)
                except RuntimeError:  # the loop closed meanwhile
                    break
            self._write_state(snap)
            if snap is not None:
                self._save_sums()
        if self._shared and self._lake is not None:
            try:  # the others stop counting it in their shares now, not when it expires
                fleet.leave(self._lake[1], _METADATA, self.publisher)
            except duckdb.Error as e:
                log.debug("meterline: cannot withdraw from the fleet: %s", fleet.reason(e))
        self._close_lake()


def _being_migrated(error: Exception) -> bool:
    """A read that met the events table between two of its migrations (a new lake: each
    added column is its own commit, by this proxy's writer or another's): one of the
    schema's own columns is not there yet. The next read finds it."""
    text = str(error)
    return isinstance(error, duckdb.BinderException) and any(
        f'column named "{name}"' in text or f'"{name}" not found' in text for name in EVENT_COLUMNS
    )
