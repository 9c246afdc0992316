"""Invoices as values: what the builder produces, the ledger stores and render prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from billing.money import minor_unit

LINE_KINDS = ("flat", "usage", "late_usage", "credit")
# The kinds of line that bill metered events (have windows, consumers and a meter).
USAGE_KINDS = ("usage", "late_usage")


@dataclass
class InvoiceLine:
    kind: str
    """``flat`` (a fee), ``usage`` (this period's usage) or ``late_usage`` (an earlier one's)."""
    rate_card_key: str
    feature_key: str | None
    plan_key: str
    description: str
    usage_start: datetime
    """The window the line bills (for a fee: the span it covers), UTC."""
    usage_end: datetime
    quantity: Decimal
    unit_price: Decimal | None
    amount: Decimal
    """Rounded once to the currency's minor unit."""
    detail: dict[str, Any]
    line_no: int = 0


@dataclass
class Invoice:
    customer_key: str
    customer_name: str
    currency: str
    period_start: datetime
    period_end: datetime
    watermark: datetime
    """Events ingested at or before it are billed here (or were on earlier invoices)."""
    catalog_digest: str
    lines: list[InvoiceLine] = field(default_factory=list)
    status: str = "preview"
    number: str | None = None
    seq: int | None = None
    issued_at: datetime | None = None
    stored_total: Decimal | None = None
    """The total column as stored (read back without lines)."""
    extra: dict[str, object] = field(default_factory=dict)
    """Columns other packages add to stored invoices (``billing.extensions``), such as
    the Stripe sync's ``stripe_status``."""

    @property
    def total(self) -> Decimal:
        """The sum of the rounded line amounts: never rounded again (``0.00`` with none)."""
        if not self.lines and self.stored_total is not None:
            return self.stored_total
        return sum((line.amount for line in self.lines), minor_unit(self.currency) * 0)

    def line(self, line_no: int) -> InvoiceLine:
        for line in self.lines:
            if line.line_no == line_no:
                return line
        raise KeyError(line_no)
