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
from typing import Any

import duckdb

from billing import render
from billing.dashboard.panels import CustomerPanel, register
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


def _share(used: Any, limit: Any) -> Decimal | None:
    try:
        u, lim = Decimal(str(render.scalar(used))), Decimal(str(render.scalar(limit)))
    except (ArithmeticError, ValueError, TypeError):
        return None
    return None if lim <= 0 else min(Decimal(100), u * 100 / lim)


def gauges_html(rows: list[dict[str, Any]]) -> str:
    """One bar per limit: used (and reserved) against the limit; unlimited and boolean
    entitlements as a line of text."""
    out = ['<div class="gauges">']
    for r in rows:
        label = f"{r.get('feature')} · {r.get('enforcement', '')} {r.get('type', '')}".strip()
        share = _share(r.get("used"), r.get("limit"))
        used, limit = render.scalar(r.get("used")), render.scalar(r.get("limit"))
        if share is None:
            text = "unlimited" if limit == "unlimited" else (str(limit) if limit else "granted")
            out.append(f'<div class="gauge"><span>{e(label)}</span><span>{e(text)}</span></div>')
            continue
        pct = f"{share.quantize(Decimal('0.1'))}"
        level = "over" if share >= 100 else ("near" if share >= 80 else "ok")
        out.append(
            f'<div class="gauge {level}"><span>{e(label)}</span>'
            f'<meter min="0" max="100" value="{pct}" title="{pct}%"></meter>'
            f"<span>{e(str(used))} / {e(str(limit))}</span></div>"
        )
    out.append("</div>")
    return "".join(out)


if _rows_function() is not None:
    register(CustomerPanel("entitlements", "Entitlements and credit", gauges_data, gauges_html))
