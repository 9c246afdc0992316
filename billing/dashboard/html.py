"""The dashboard's HTML building blocks: the page layout, tables, charts, filters, links.

Pages (``pages.py``) compose these from the query layer's data; nothing here reads the store.
"""

import html
import json
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlencode

from billing import render
from billing.shown import name, visible
from meterline.catalog import Catalog

e = html.escape
Data = dict[str, Any]

NAV = (("/usage", "Usage"), ("/customers", "Customers"), ("/unbilled", "Unbilled"),
       ("/health", "Proxy health"))  # fmt: skip


def layout(title: str, body: str, *, active: str, json_url: str) -> str:
    nav = "".join(
        f'<a href="{href}"{" class=active" if href == active else ""}>{e(label)}</a>'
        for href, label in NAV
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(visible(title))} · Meterline</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/assets/dashboard.css">
<script src="/assets/vega.js" defer></script>
<script src="/assets/dashboard.js" defer></script>
</head>
<body>
<nav><span class="brand">Meterline</span>{nav}
<a class="json" href="{e(json_url)}">JSON</a></nav>
<main>
<h1 dir="auto">{e(visible(title))}</h1>
{body}
</main>
</body>
</html>
"""


# --------------------------------------------------------------------------- pieces


def num(value: Any) -> str:
    """An integer with thousands separators; Decimals as they are; None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(render.scalar(value))


def table(
    rows: Sequence[Data],
    columns: Sequence[tuple[str, str]],
    *,
    css_id: str,
    numeric: Iterable[str] = (),
    cells: dict[str, Any] | None = None,
    footer: Data | None = None,
) -> str:
    """``columns``: (field, heading). ``cells[field](row)`` overrides a cell's HTML.
    ``footer``: a row (plain values, no ``cells``) in the table's ``<tfoot>``."""
    if not rows:
        return f'<p class="empty" id="{css_id}">Nothing in this range.</p>'
    right = set(numeric)
    head = "".join(f"<th{' class=num' if f in right else ''}>{e(h)}</th>" for f, h in columns)
    body = []
    for r in rows:
        tds = []
        for f, _ in columns:
            inner = (cells or {}).get(f)
            value = r.get(f)
            text = inner(r) if inner else (name(value) if isinstance(value, str) else e(num(value)))
            cls = ' class="num"' if f in right else ""
            tds.append(f'<td data-field="{f}"{cls}>{text}</td>')
        body.append(f"<tr>{''.join(tds)}</tr>")
    foot = ""
    if footer is not None:
        tds = [
            f'<td data-field="{f}"{" class=num" if f in right else ""}>'
            f"{e(num(footer.get(f))) if footer.get(f) is not None else ''}</td>"
            for f, _ in columns
        ]
        foot = f"<tfoot><tr>{''.join(tds)}</tr></tfoot>"
    return (
        f'<table id="{css_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
        f"{foot}</table>"
    )


SCRIPT_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)
"""JSON inside ``<script>``: no ``<`` means no ``</script>``, ``<!--`` or ``<script`` for
the HTML parser to act on (a model named ``<!--<script>`` would swallow the page);
``\\u003c`` is the same string to ``JSON.parse``."""


def script_json(value: Any) -> str:
    """``value`` as JSON safe to embed in a ``<script>`` element."""
    return json.dumps(value, separators=(",", ":")).translate(SCRIPT_ESCAPES)


def chart(css_id: str, spec: Data) -> str:
    """The chart's ``<div data-spec>`` and its spec; without data, a "nothing to chart" box
    instead (Vega draws empty axes for no rows and warns about an infinite extent)."""
    if not spec.get("data", {}).get("values"):
        title = f'<div class="chart-title">{e(spec["title"])}</div>' if spec.get("title") else ""
        return (
            f'<div class="chart chart-empty" id="{css_id}">{title}'
            '<p class="empty">Nothing to chart in this range.</p></div>'
        )
    text = script_json(spec)
    return (
        f'<div class="chart" id="{css_id}" data-spec="{css_id}-spec"></div>'
        f'<script type="application/json" id="{css_id}-spec">{text}</script>'
    )


def stat(label: str, value: str, css_id: str) -> str:
    return (
        f'<div class="stat"><div class="label">{name(label)}</div>'
        f'<div id="{css_id}">{e(visible(value))}</div></div>'
    )


def _options(values: Iterable[str], selected: str | None, blank: str) -> str:
    out = [f'<option value="">{e(blank)}</option>']
    for v in values:
        sel = " selected" if v == selected else ""
        out.append(f'<option value="{e(v)}"{sel}>{e(visible(v))}</option>')
    return "".join(out)


def _when(value: Any) -> str:
    return "" if value is None else str(render.scalar(value))


def filters(
    action: str, rng: Data, catalog: Catalog, scope: Data | None = None, buckets: bool = True
) -> str:
    parts = [
        f'<label>From <input name="from" value="{e(_when(rng["from"]))}" size="20"></label>',
        f'<label>To <input name="to" value="{e(_when(rng["to"]))}" size="20"></label>',
    ]
    if buckets:
        opts = "".join(
            f'<option value="{b}"{" selected" if rng["bucket"] == b else ""}>{b}</option>'
            for b in ("hour", "day")
        )
        parts.append(f'<label>By <select name="bucket">{opts}</select></label>')
    if scope is not None:
        customers = [c.key for c in catalog.customers]
        consumers = [c.name for c in catalog.consumers]
        parts += [
            '<label>Customer <select name="customer">'
            f"{_options(customers, scope['customer'], 'all')}</select></label>",
            '<label>Consumer <select name="consumer">'
            f"{_options(consumers, scope['consumer'], 'all')}</select></label>",
            f'<label>Key <input name="key" value="{e(scope["key"] or "")}" size="14" '
            'placeholder="sha256:…"></label>',
        ]
    return (
        f'<form class="filters" method="get" action="{action}">{"".join(parts)}'
        '<button type="submit">Show</button></form>'
    )


def link(path: str, **params: Any) -> str:
    q = {k: _when(v) for k, v in params.items() if v not in (None, "")}
    return path + ("?" + urlencode(q) if q else "")


def error_page(status: int, message: str) -> str:
    return layout(f"Error {status}", f'<p class="error">{e(message)}</p>', active="",
                  json_url="#")  # fmt: skip
