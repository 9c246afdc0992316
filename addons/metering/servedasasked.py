"""Whether admitted calls were served as they asked, and what the limits learn if not.

A call is checked against the limits of what its request names: a model, a service tier,
standard speed. Its events say what served it: an alias or a deployment billed as
another model, ``flex`` asked and ``default`` served, fast mode a deployment turned on.
:class:`ServedAsAsked` keeps, per admitted call, what it asked (the request path: dict
stores), and at its end compares with its events: a model billed under another name is
learnt (:class:`~addons.metering.billedas.BilledAs`: from then on the call meets the
limits of both names), a tier or a speed not kept makes such calls meet every limit of
their model from then on. Each finding is logged once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from addons.metering.billedas import BilledAs
from addons.metering.reserve import asks_standard_speed, requested_tier
from meterline.entitlements import CustomerPolicy, Policy
from meterline.served import canonical
from meterline.servicetiers import REQUESTABLE_TIERS

log = logging.getLogger("meterline.governance")

#: Feature and name pairs warned about before the set is cleared.
MAX_WARNED = 256


class ServedAsAsked:
    def __init__(self) -> None:
        self.billed_as = BilledAs()
        """Per provider, the models calls naming a model were billed as (an alias)."""
        self._models: dict[str, tuple[str, str]] = {}
        """Admitted call -> (provider, model it names): learnt from at its end."""
        self._tiers: dict[str, tuple[str, str]] = {}
        """Admitted call -> (provider, the service tier it asked for and was checked at)."""
        self._standard: dict[str, str] = {}
        """Admitted call -> provider, for a call checked as one that cannot run fast."""
        self._tiers_not_kept: set[tuple[str, str]] = set()
        """(provider, tier) a request asked for and was served otherwise: from then on
        such a request meets every limit of its model (the tier is not a promise)."""
        self._speed_not_kept: set[str] = set()
        """Providers seen running fast a call that did not ask for it."""
        self._warned_names: set[tuple[str, str, str, str]] = set()
        """(feature, provider, asked, billed) warned about (at most :data:`MAX_WARNED`)."""

    def __len__(self) -> int:
        """Calls being watched (admitted, not ended)."""
        return len(self._models) + len(self._tiers) + len(self._standard)

    def tier(
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

    def standard_speed(
        self, pol: CustomerPolicy, provider: str, body: Callable[[], bytes] | None
    ) -> bool:
        """Whether the call is checked as one that cannot run fast: the plan has a
        feature of some speeds only, the request does not ask for fast mode, and this
        provider has not been seen to run such a call fast (a deployment that sets the
        speed itself: then every limit of the model applies)."""
        if not pol.speed_filtered or body is None or provider in self._speed_not_kept:
            return False
        return asks_standard_speed(body())

    def admitted(
        self, call: str, provider: str, model: str, tier: str | None, standard: bool
    ) -> None:
        """``call`` (the id its estimate is held under) was admitted as asking these."""
        if model:
            self._models[call] = (provider, model)
        if tier is not None:
            self._tiers[call] = (provider, tier)
        if standard:
            self._standard[call] = provider

    def forget(self, call: str) -> None:
        """``call`` ends with no event to compare (a background response, queued)."""
        self._models.pop(call, None)
        self._tiers.pop(call, None)
        self._standard.pop(call, None)

    def ended(self, call: str, rows: list[dict[str, Any]], policy: Policy) -> None:
        """Compare what ``call`` asked with its events ``rows`` (none: nothing learnt)."""
        asked = self._models.pop(call, None)
        if asked is not None:
            self._learn(asked, rows, policy)
        tier = self._tiers.pop(call, None) if self._tiers else None
        if tier is not None:
            self._check_tier_kept(tier, rows)
        standard = self._standard.pop(call, None) if self._standard else None
        if standard is not None:
            self._check_speed_kept(standard, rows)

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
                _found(
                    self._tiers_not_kept,
                    asked,
                    "meterline: %s served a call asking for tier %r at %r: such calls meet "
                    "every limit of their model from now on",
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
                _found(
                    self._speed_not_kept,
                    provider,
                    "meterline: %s ran a call fast that did not ask for fast mode: every call "
                    "meets the fast features' limits from now on",
                    provider,
                )
                return

    def _learn(self, asked: tuple[str, str], rows: list[dict[str, Any]], policy: Policy) -> None:
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
                consumer = event.get("consumer")
                pol = policy.by_consumer.get(consumer) if isinstance(consumer, str) else None
                if pol is not None:
                    self._warn_unbilled_names(pol, provider, model, billed)

    def _warn_unbilled_names(
        self, pol: CustomerPolicy, provider: str, asked: str, billed: str
    ) -> None:
        """A feature that matches the name a call asked for but not the one it is billed
        as (a deployment's or an alias's name in its meter) counts none of its tokens:
        the store, the limits and the invoices read the billed name, so its limit never
        fills. Said once per feature and pair, as the proxy learns the pair."""
        for acct in pol.accounts:
            if not acct.matches_model(provider, asked) or acct.matches_model(provider, billed):
                continue
            warned = (acct.feature, provider, asked, billed)
            if warned not in self._warned_names:
                if len(self._warned_names) >= MAX_WARNED:
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


def _found[T](seen: set[T], finding: T, message: str, *args: object) -> None:
    """Note ``finding`` in ``seen`` and log ``message`` the first time only."""
    if finding not in seen:
        seen.add(finding)
        log.info(message, *args)
