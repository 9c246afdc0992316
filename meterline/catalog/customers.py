"""Who is billed: customers, their subscriptions, alerts and the seller."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from meterline.catalog.base import KEY_RE, CurrencyCode, Money, _Model
from meterline.catalog.products import EntitlementOverride
from meterline.utc import as_utc_in_range


class Subscription(_Model):
    plan: str
    start: datetime
    end: datetime | None = None
    """Exclusive; a plan change ends one subscription where the next starts."""

    @field_validator("start", "end")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else as_utc_in_range(value)

    @model_validator(mode="after")
    def _ordered(self) -> Subscription:
        if self.end is not None and self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class InvoiceSettings(_Model):
    collection_method: Literal["send_invoice", "charge_automatically"] = "send_invoice"
    days_until_due: int = Field(default=30, ge=0)


class Customer(_Model):
    key: str = Field(pattern=KEY_RE)
    name: str
    email: str | None = None
    currency: CurrencyCode
    consumers: list[str] = Field(default_factory=list)
    subscriptions: list[Subscription] = Field(default_factory=list)
    invoicing: InvoiceSettings = InvoiceSettings()
    entitlements: list[EntitlementOverride] = Field(default_factory=list)
    """Per-customer limits superseding the plan's (see :class:`EntitlementOverride`)."""

    @field_validator("subscriptions")
    @classmethod
    def _no_overlap(cls, subs: list[Subscription]) -> list[Subscription]:
        ordered = sorted(subs, key=lambda s: s.start)
        for a, b in zip(ordered, ordered[1:], strict=False):
            if a.end is None or a.end > b.start:
                raise ValueError(
                    f"subscriptions overlap: {a.plan} from {a.start:%Y-%m-%dT%H:%M:%SZ} "
                    f"and {b.plan} from {b.start:%Y-%m-%dT%H:%M:%SZ}"
                )
        return subs

    @field_validator("entitlements")
    @classmethod
    def _one_override_per_start(
        cls, overrides: list[EntitlementOverride]
    ) -> list[EntitlementOverride]:
        """Two overrides of a feature's limit (of one ``period``) from the same start leave
        it to their order."""
        starts = [(o.feature, o.start, o.period) for o in overrides]
        dupes = sorted(
            {
                f"{f}{'' if p is None else f' per {p}'} from "
                f"{'the start' if s is None else f'{s:%Y-%m-%dT%H:%M:%SZ}'}"
                for f, s, p in starts
                if starts.count((f, s, p)) > 1
            }
        )
        if dupes:
            raise ValueError(f"duplicate entitlement override(s): {', '.join(dupes)}")
        return overrides


class Webhook(_Model):
    url: str = Field(pattern=r"^https?://")
    secret_env: str
    """Environment variable holding the HMAC-SHA256 signing secret (never in the file)."""


class Alerts(_Model):
    """Thresholds that fire once per period each, delivered to ``webhooks``."""

    webhooks: list[Webhook] = Field(default_factory=list)
    entitlement_percent: list[Annotated[int, Field(gt=0, le=1000)]] = Field(
        default_factory=lambda: [50, 80, 100]
    )
    """Percent of each metered entitlement's limit used in its usage period."""
    credit_balance_below: list[Money] = Field(default_factory=list)
    """Remaining credit balance (plan currency) below these amounts."""
    period_spend_above: list[Money] = Field(default_factory=list)
    """Running usage cost of the billing period (plan currency) above these amounts."""


class Seller(_Model):
    """Who issues the invoices: printed on invoice pages and statements."""

    name: str
    address: list[str] = Field(default_factory=list)
    """Address lines, as printed."""
    email: str | None = None
    tax_id: str | None = None
    website: str | None = None
