"""The customer page's entitlement and credit gauges, from ``billing entitlements``' rows.

Registered only when :mod:`billing.entitlements` (governance) provides
``entitlement_rows(con, catalog, customer=, now=)``; otherwise the page shows nothing for
it. The panel's data is exactly ``billing entitlements --customer C --format json``'s
rows (at the page's instant), so the gauges have their CLI twin too.
"""

from __future__ import annotations

import html
import importlib
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

import duckdb

from billing import render
from billing.dashboard.panels import CustomerPanel, register
from billing.shown import name
from meterline.catalog import Catalog

e = html.escape


def _rows_function() -> Callable[..., list[dict[str, Any]]] | None:
    try:
        module = importlib.import_module("billing.entitlements")
    except ModuleNotFoundError:
        return None
    fn = getattr(module, "entitlement_rows", None)
    return fn if callable(fn) else None


def gauges_data(
    con: duckdb.DuckDBPyConnection, catalog: Catalog, key: str, at: datetime
) -> list[dict[str, Any]] | None:
    fn = _rows_function()
    if fn is None:
        return None
    rows = fn(con, catalog, customer=key, now=at)
    return rows or None


class Gauge(NamedTuple):
    """One limit's bar, in ``billing entitlements``' figures: ``consumed`` (used plus
    reserved in flight) against ``ceiling`` (the limit plus granted units, which the proxy
    adds to it)."""

    consumed: Decimal
    ceiling: Decimal
    limit: Decimal
    granted: Decimal
    reserved: Decimal

    @property
    def share(self) -> Decimal:
        """Percent of the ceiling consumed, at most 100 (a ceiling of 0 is full)."""
        if self.ceiling <= 0:
            return Decimal(100)
        return min(Decimal(100), self.consumed * 100 / self.ceiling)


def _number(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(str(render.scalar(value)))
    except ArithmeticError:
        return None


def gauge(row: dict[str, Any]) -> Gauge | None:
    """The bar of one ``billing entitlements`` row; ``None`` for an unlimited or boolean
    entitlement (no number to fill up)."""
    limit, used = _number(row.get("limit")), _number(row.get("used"))
    if limit is None or used is None:
        return None
    granted = _number(row.get("granted_units")) or Decimal(0)
    reserved = _number(row.get("reserved")) or Decimal(0)
    return Gauge(used + reserved, limit + granted, limit, granted, reserved)


def _figure(value: Decimal) -> str:
    return f"{value:,}" if value == value.to_integral_value() else f"{value:,f}"


def _gauge_text(g: Gauge, remaining: Any) -> str:
    """``2 / 6`` and what makes them up: ``limit 1 + 5 granted · 1 reserved · 4 left``."""
    parts = [f"{_figure(g.consumed)} / {_figure(g.ceiling)}"]
    detail = []
    if g.granted:
        detail.append(f"limit {_figure(g.limit)} + {_figure(g.granted)} granted")
    if g.reserved:
        detail.append(f"{_figure(g.reserved)} reserved")
    left = _number(remaining)
    if left is not None:
        detail.append(f"{_figure(left)} left")
    return parts[0] + (f" ({' · '.join(detail)})" if detail else "")


def gauges_html(rows: list[dict[str, Any]]) -> str:
    """One bar per limit: used and reserved against the limit plus granted units, the
    figures of ``billing entitlements`` (its ``remaining`` shown as left); unlimited and
    boolean entitlements as a line of text."""
    out = ['<div class="gauges">']
    for r in rows:
        label = f"{r.get('feature')} · {r.get('enforcement', '')} {r.get('type', '')}".strip()
        g = gauge(r)
        if g is None:
            limit = render.scalar(r.get("limit"))
            text = "unlimited" if limit == "unlimited" else "granted"
            out.append(f'<div class="gauge"><span>{name(label)}</span><span>{e(text)}</span></div>')
            continue
        pct = f"{g.share.quantize(Decimal('0.1'))}"
        level = "over" if g.share >= 100 else ("near" if g.share >= 80 else "ok")
        out.append(
            f'<div class="gauge {level}"><span>{name(label)}</span>'
            f'<meter min="0" max="100" value="{pct}" title="{pct}%"></meter>'
            f'<span class="gauge-figures">{e(_gauge_text(g, r.get("remaining")))}</span></div>'
        )
    out.append("</div>")
    return "".join(out)


if _rows_function() is not None:
    register(CustomerPanel("entitlements", "Entitlements and credit", gauges_data, gauges_html))
