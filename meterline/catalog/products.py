"""What is sold: features (slices of the token meter), prices, entitlements, plans."""

from __future__ import annotations

import fnmatch
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from meterline.catalog.base import (
    CALL_TYPES,
    KEY_RE,
    TOKEN_ONLY_TYPES,
    Accepts,
    CurrencyCode,
    Money,
    TokenType,
    _iso_duration,
    _Model,
)
from meterline.served import Served, ServedFilter
from meterline.servicetiers import tier_matches
from meterline.utc import as_utc_in_range

TierName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=64)]
"""A name providers give to how a call was served: a service tier (``default``, ``flex``,
``on_demand``), a speed (``fast``), a place (``us``): a name, not a glob."""

Limit = Annotated[
    Annotated[int, Field(ge=0)] | Literal["unlimited"], Accepts('an integer >= 0 or "unlimited"')
]
"""An entitlement's units per usage period, or no limit."""


class FeatureMeter(_Model):
    """A slice of the token meter. ``model`` is a glob (``gpt-4o*``), matched
    case-insensitively; ``service_tier``, ``speed`` and ``inference_geo`` name how the
    provider says it served the call (``flex``; ``[priority, scale]``; ``fast``; ``us``),
    matched by the rule of :mod:`meterline.served` (an event without a value counts where
    the standard way is named: ``default`` or ``standard``, ``standard``, ``global``)."""

    provider: str | None = None
    model: str = "*"
    service_tier: tuple[TierName, ...] | None = Field(default=None, min_length=1)
    """Only calls served at one of these tiers (one name alone: a list of one), lower
    case; ``None``: every tier (:mod:`meterline.servicetiers`)."""
    speed: tuple[TierName, ...] | None = Field(default=None, min_length=1)
    """Only calls run at one of these speeds (Anthropic ``fast``, ``standard``); ``None``:
    every speed."""
    inference_geo: tuple[TierName, ...] | None = Field(default=None, min_length=1)
    """Only calls run in one of these geographies (Anthropic ``us``, ``global``); ``None``:
    everywhere."""

    @field_validator("service_tier", "speed", "inference_geo", mode="before")
    @classmethod
    def _served_names(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list | tuple):
            value = [v.lower() if isinstance(v, str) else v for v in value]
            dupes = sorted({v for v in value if value.count(v) > 1})
            if dupes:
                what = "service tier" if info.field_name == "service_tier" else info.field_name
                raise ValueError(f"duplicate {what}(s): {', '.join(map(str, dupes))}")
        return value

    token_types: list[TokenType] = Field(
        default_factory=lambda: list(TOKEN_ONLY_TYPES), min_length=1
    )
    """Default: every token type; ``web_search`` (a count of calls) only when listed."""

    @field_validator("token_types")
    @classmethod
    def _calls_apart(cls, value: list[TokenType]) -> list[TokenType]:
        dupes = sorted({t for t in value if value.count(t) > 1})
        if dupes:  # each listing adds the type's tokens to the feature's quantity again
            raise ValueError(f"duplicate token type(s): {', '.join(dupes)}")
        calls = [t for t in value if t in CALL_TYPES]
        if calls and len(calls) < len(value):
            raise ValueError(
                f"{calls[0]} counts calls, not tokens: give it a feature of its own "
                "(priced per call, e.g. per: 1000), not one summed with token types"
            )
        return value

    def matches(self, provider: str, model: str, token_type: str) -> bool:
        """Whether some call to ``model`` of ``provider`` counts ``token_type`` here: the
        tier, speed and geography that serve a call are known only once it is answered
        (:meth:`counts_served`)."""
        return (
            (self.provider is None or self.provider == provider)
            and token_type in self.token_types
            and fnmatch.fnmatchcase(model.lower(), self.model.lower())
        )

    def counts_tier(self, service_tier: str | None) -> bool:
        """Whether an event served at ``service_tier`` (``None``: not reported) counts here
        as far as its tier goes (what a request asks for: :meth:`counts_served` decides)."""
        return tier_matches(self.service_tier, service_tier)

    @property
    def served(self) -> ServedFilter:
        """The filters on how calls were served (:mod:`meterline.served`)."""
        return ServedFilter(self.service_tier, self.speed, self.inference_geo)

    def counts_served(self, served: Served) -> bool:
        """Whether an event served as ``served`` (tier, speed, geography) counts here."""
        return self.served.counts(served)


class Feature(_Model):
    key: str = Field(pattern=KEY_RE)
    name: str
    meter: FeatureMeter


class Tier(_Model):
    up_to: int | None = Field(default=None, gt=0)
    """Upper bound of the tier in units (inclusive); ``None`` for the last, open tier."""
    unit_amount: Money = Decimal(0)
    """Price per ``per`` units inside this tier."""
    flat_amount: Money = Decimal(0)
    """Flat amount charged once when usage reaches this tier."""


class FlatPrice(_Model):
    type: Literal["flat"]
    amount: Money
    payment_term: Literal["in_advance", "in_arrears"] = "in_advance"
    prorate: bool = True
    """Prorate a partial period by its share of the full period, in seconds."""


class UnitPrice(_Model):
    type: Literal["unit"]
    amount: Money
    """Price per ``per`` units."""
    per: int = Field(default=1, gt=0)


class TieredPrice(_Model):
    type: Literal["tiered"]
    mode: Literal["graduated", "volume"]
    per: int = Field(default=1, gt=0)
    tiers: list[Tier] = Field(min_length=1)

    @field_validator("tiers")
    @classmethod
    def _tiers_ascend(cls, tiers: list[Tier]) -> list[Tier]:
        bounds = [t.up_to for t in tiers]
        if bounds[-1] is not None:
            raise ValueError("the last tier must be open (no up_to)")
        if any(b is None for b in bounds[:-1]):
            raise ValueError("only the last tier may be open (no up_to)")
        closed = [b for b in bounds[:-1] if b is not None]
        if any(b >= c for b, c in zip(closed, closed[1:], strict=False)):
            raise ValueError("tier bounds (up_to) must strictly increase")
        return tiers


class PackagePrice(_Model):
    type: Literal["package"]
    amount: Money
    """Price of one package; a started package is billed in full."""
    package_size: int = Field(gt=0)


Price = Annotated[FlatPrice | UnitPrice | TieredPrice | PackagePrice, Field(discriminator="type")]


class Entitlement(_Model):
    """What a plan entitles to; enforced by the proxy (see ``meterline/entitlements``).

    ``metered``: at most ``limit`` units of the feature per usage period (the billing
    period unless ``period`` is given); ``hard`` refuses calls once it is reached,
    ``soft`` lets them through (and alerts). ``boolean``: access to the feature's
    models; once a plan lists one, calls to models no entitlement names are refused.
    """

    feature: str
    type: Literal["metered", "boolean"] = "metered"
    limit: Limit | None = None
    """Units per usage period, or ``unlimited``; required for ``metered``."""
    enforcement: Literal["hard", "soft"] = "hard"
    period: str | None = None
    """ISO-8601 duration of the usage period, anchored at the subscription start."""

    @model_validator(mode="before")
    @classmethod
    def _default_type(cls, data: object) -> object:
        """No ``type``: metered when a limit is given, else boolean (access, no limit)."""
        if isinstance(data, dict) and "type" not in data:
            return {**data, "type": "boolean" if data.get("limit") is None else "metered"}
        return data

    @field_validator("period")
    @classmethod
    def _period(cls, value: str | None) -> str | None:
        return None if value is None else _iso_duration(value)

    @model_validator(mode="after")
    def _shape(self) -> Entitlement:
        if self.type == "metered" and self.limit is None:
            raise ValueError("a metered entitlement needs a limit (a number or unlimited)")
        if self.type == "boolean" and self.limit is not None:
            raise ValueError("a boolean entitlement has no limit")
        return self


class EntitlementOverride(_Model):
    """A customer's own limit for a feature, superseding the plan's from ``start`` on.

    ``period`` says which of the plan's limits of the feature it supersedes: the one
    counted per that period. Without it: the feature's billing-period limit, or its only
    limit. An override that supersedes none of the plan's limits adds its own (per
    ``period``, default the billing period); the plan's other limits of the feature stay.
    """

    feature: str
    limit: Limit
    enforcement: Literal["hard", "soft"] | None = None
    start: datetime | None = None
    period: str | None = None

    @field_validator("period")
    @classmethod
    def _period(cls, value: str | None) -> str | None:
        return None if value is None else _iso_duration(value)

    @field_validator("start")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else as_utc_in_range(value)


class RateCard(_Model):
    key: str = Field(pattern=KEY_RE)
    name: str
    feature: str | None = None
    """Feature key; required for usage prices, forbidden for flat fees."""
    price: Price
    included: int = Field(default=0, ge=0)
    """Free units per billing period, consumed before any price applies."""
    min_amount: Money | None = None
    max_amount: Money | None = None
    discount_percent: Annotated[Decimal, Field(ge=0, le=100)] = Decimal(0)

    @model_validator(mode="after")
    def _feature_matches_price(self) -> RateCard:
        if isinstance(self.price, FlatPrice):
            if self.feature is not None:
                raise ValueError("a flat fee has no feature")
            if self.included:
                raise ValueError("a flat fee has no included units")
        elif self.feature is None:
            raise ValueError(f"a {self.price.type} price needs a feature")
        if (
            self.min_amount is not None
            and self.max_amount is not None
            and self.min_amount > self.max_amount
        ):
            raise ValueError("min_amount is greater than max_amount")
        return self


class Plan(_Model):
    key: str = Field(pattern=KEY_RE)
    name: str
    currency: CurrencyCode
    billing_cadence: str = "P1M"
    """ISO-8601 duration: ``P1M``, ``P1W``, ``P1Y``, ``P3M``, ``P14D``."""
    rate_cards: list[RateCard] = Field(default_factory=list)
    entitlements: list[Entitlement] = Field(default_factory=list)
    prepaid: bool = False
    """Calls are refused once the credit balance minus the period's running cost is zero."""

    @field_validator("billing_cadence")
    @classmethod
    def _cadence(cls, value: str) -> str:
        return _iso_duration(value)

    @field_validator("rate_cards")
    @classmethod
    def _unique_cards(cls, cards: list[RateCard]) -> list[RateCard]:
        keys = [c.key for c in cards]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"duplicate rate card key(s): {', '.join(dupes)}")
        return cards

    @model_validator(mode="after")
    def _one_limit_per_usage_period(self) -> Plan:
        """Two metered entitlements of a feature over the same usage period share one counter."""
        periods = [
            (e.feature, e.period or self.billing_cadence)
            for e in self.entitlements
            if e.type == "metered"
        ]
        dupes = sorted({f"{f} per {p}" for f, p in periods if periods.count((f, p)) > 1})
        if dupes:
            raise ValueError(f"duplicate metered entitlement(s): {', '.join(dupes)}")
        return self
