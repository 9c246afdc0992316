"""HTML for the dashboard's pages, from the query layer's data (never from the store).

Each function takes exactly the data the page's ``.json`` twin returns, so what a page
shows and what a script reads cannot differ. Charts are Vega-Lite specs in a
``<script type="application/json">`` beside their ``<div data-spec>``; ``dashboard.js``
draws them with vega-embed and keeps each view in ``window.meterlineCharts``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from billing import render
from billing.charts import stacked_bars
from billing.dashboard.html import (
    Data,
    chart,
    e,
    filters,
    layout,
    link,
    num,
    stat,
    table,
)
from billing.dashboard.panels import load_panels
from billing.documents.words import human_date, human_span
from billing.money import format_money
from billing.shown import legible, name, visible
from meterline.catalog import TOKEN_TYPES, Catalog

# --------------------------------------------------------------------------- pages


TOKEN_COLS = [(tt, tt.replace("_", " ")) for tt in TOKEN_TYPES]


def bars(rows: list[Data], rng: Data, **options: Any) -> Data:
    """:func:`~billing.charts.stacked_bars` over ``rng`` (the query's ``range``)."""
    return stacked_bars(rows, bucket=rng["bucket"], span=(rng["from"], rng["to"]), **options)


def coarser_note(note: tuple[str, str] | None) -> str:
    """Why the page is by day though hours were asked for, with the hourly JSON linked."""
    if note is None:
        return ""
    text, hourly = note
    return (
        f'<p class="muted coarser" id="coarser">{e(text)} <a href="{e(hourly)}">Hourly JSON</a></p>'
    )


def usage_page(
    data: Data, catalog: Catalog, json_url: str, *, note: tuple[str, str] | None = None
) -> str:
    """``note``: (why the page is by day, the hourly JSON's URL)."""
    rng, scope = data["range"], data["scope"]
    who = visible(scope["customer"] or scope["consumer"] or scope["key"] or "all customers")
    bucket = rng["bucket"]
    totals = data["totals"]
    body = [
        filters("/usage", rng, catalog, scope),
        coarser_note(note),
        '<div class="stats">',
        stat("Tokens", num(totals["total"]), "total-tokens"),
        stat("Events", num(totals["events"]), "total-events"),
        stat("Output tokens", num(totals["output"] + totals["audio_output"]), "total-output"),
        "</div>",
        chart(
            "chart-by-model",
            bars(
                legible(data["by_model"], "model"),
                rng,
                x="bucket",
                y="tokens",
                color="model",
                title=f"Tokens per {bucket} by model · {who}",
            ),
        ),  # fmt: skip
        chart(
            "chart-by-type",
            bars(
                data["by_type"],
                rng,
                x="bucket",
                y="tokens",
                color="token_type",
                title=f"Tokens per {bucket} by token type · {who}",
            ),
        ),  # fmt: skip
        "<h2>By model</h2>",
        table(
            data["models"],
            [
                ("provider", "Provider"),
                ("model", "Model"),
                *TOKEN_COLS,
                ("total", "Total"),
                ("events", "Events"),
            ],
            css_id="models",
            numeric=[*TOKEN_TYPES, "total", "events"],
        ),  # fmt: skip
    ]
    return layout(f"Usage · {who}", "\n".join(body), active="/usage", json_url=json_url)


def customers_page(data: Data, catalog: Catalog, json_url: str) -> str:
    def customer_link(r: Data) -> str:
        return f'<a href="/customers/{e(r["customer"])}">{name(r["name"])}</a>'

    def consumers(r: Data) -> str:
        return ", ".join(
            f'<a href="{e(link("/usage", consumer=c))}">{name(c)}</a>' for c in r["consumers"]
        )

    body = table(
        data["customers"],
        [("name", "Customer"), ("customer", "Key"), ("plan", "Plan now"),
         ("currency", "Currency"), ("consumers", "Consumers")],
        css_id="customers",
        cells={"name": customer_link, "consumers": consumers},
    )  # fmt: skip
    return layout("Customers", body, active="/customers", json_url=json_url)


def _money(amount: Any, currency: str) -> str:
    return "—" if amount is None else format_money(Decimal(str(amount)), currency)


def _lines_table(inv: Data) -> str:
    currency = inv["currency"]
    rows = [ln for ln in inv["lines"]]
    return table(
        rows,
        [("line_no", "#"), ("description", "Line"), ("quantity", "Quantity"),
         ("amount", "Amount")],
        css_id="preview-lines",
        numeric=["quantity", "amount"],
        cells={
            "quantity": lambda r: e(f"{Decimal(str(render.scalar(r['quantity']))):,f}"),
            "amount": lambda r: e(_money(r["amount"], currency)),
        },
    )  # fmt: skip


def customer_page(data: Data, catalog: Catalog, json_url: str) -> str:
    c = data["customer"]
    currency = c["currency"]
    consumers = ", ".join(name(n) for n in c["consumers"]) or "none"
    body = [f'<p class="muted">{name(c["customer"])} · plan {name(c["plan"] or "none")} · '
            f"consumers {consumers}</p>"]  # fmt: skip
    inv = data["period_so_far"]
    body.append('<section class="panel" id="period"><h2>Current period so far</h2>')
    if inv is None:
        body.append(f'<p class="empty">{e(data["period_note"] or "No subscription.")}</p>')
    else:
        body.append('<div class="stats">')
        body.append(stat("Total so far", _money(inv["total"], currency), "period-total"))
        body.append(
            stat("Period", human_span(inv["period_start"], inv["period_end"]), "period-span")
        )
        body.append("</div>")
        body.append(_lines_table(inv))
    body.append("</section>")
    usage = data.get("usage")
    if usage is not None:
        body.append(
            chart(
                "chart-customer-usage",
                bars(
                    legible(usage["by_model"], "model"),
                    usage["range"],
                    x="bucket",
                    y="tokens",
                    color="model",
                    title="Tokens per day by model, this period",
                ),
            )  # fmt: skip
        )
    for panel_name, panel_data in data["panels"].items():
        panel = load_panels().get(panel_name)
        if panel is not None:
            body.append(
                f'<section class="panel" id="panel-{e(panel_name)}"><h2>{e(panel.title)}</h2>'
            )
            body.append(panel.html(panel_data))
            body.append("</section>")
    body.append('<section class="panel"><h2>Last invoices</h2>')
    body.append(
        table(
            data["invoices"],
            [
                ("number", "Invoice"),
                ("period", "Period"),
                ("total", "Total"),
                ("issued_at", "Issued"),
                ("stripe_status", "Stripe"),
            ],
            css_id="invoices",
            numeric=["total"],
            cells={
                "number": lambda r: f'<a href="/invoices/{e(r["number"])}">{e(r["number"])}</a>',
                "period": lambda r: e(human_span(r["period_start"], r["period_end"])),
                "total": lambda r: e(_money(r["total"], r["currency"])),
                "issued_at": lambda r: e(human_date(r["issued_at"])),
            },
        )  # fmt: skip
    )
    body.append("</section>")
    month = data["last_invoiced_month"]
    if month is not None:
        body.append(
            f'<p class="links"><a href="/customers/{e(c["customer"])}/margin?period={month}">'
            f"Margin against list price, {e(month)}</a> · "
            f'<a href="/statements/{e(c["customer"])}/{month}">Statement for {e(month)}</a></p>'
        )
    return layout(c["name"], "\n".join(body), active="/customers", json_url=json_url)


NOT_IN_CATALOG = "not in the catalog"
"""Beside an unbilled row's consumer the catalog no longer lists (renamed or removed):
the Usage page answers only for the catalog's consumers, so it is not linked."""


def _usage_link(r: Data, rng: Data, known: set[str]) -> str:
    """The consumer's usage over the page's range; unlinked when the catalog does not
    list it (the Usage page would refuse it)."""
    consumer = r.get("consumer")
    if not consumer:
        return "—"
    if consumer not in known:
        return f'{name(consumer)} <span class="muted">({NOT_IN_CATALOG})</span>'
    href = link("/usage", consumer=consumer, **{"from": rng["from"], "to": rng["to"]})
    return f'<a href="{e(href)}">{name(consumer)}</a>'


def _key_link(r: Data, rng: Data) -> str:
    """The key's usage over the page's range."""
    key = r.get("key_fingerprint")
    if not key:
        return ""
    href = link("/usage", key=key, **{"from": rng["from"], "to": rng["to"]})
    return f'<a href="{e(href)}" title="{e(key)}">{e(key[:19])}…</a>'


def _unknown_consumers_note(rows: list[Data], known: set[str]) -> str:
    unknown = sorted({r["consumer"] for r in rows if r.get("consumer")} - known)
    if not unknown:
        return ""
    return (
        f'<p class="muted" id="unknown-consumers">Consumers marked ({NOT_IN_CATALOG}) sent '
        "traffic under a name the catalog no longer lists: add them to its consumers (and "
        "to a customer, to bill them) to see their usage on the Usage page.</p>"
    )


def margin_page(data: Data, catalog: Catalog, json_url: str) -> str:
    c = data["customer"]
    body = [
        f'<p class="muted">Revenue of {name(c)}\'s invoices for {e(data["period"])} against the '
        "providers' list prices of the events they billed (USD), per model.</p>",
        table(
            data["rows"],
            [
                ("provider", "Provider"),
                ("model", "Model"),
                ("tokens", "Tokens"),
                ("revenue", "Revenue"),
                ("cost", "List-price cost (USD)"),
                ("margin", "Margin"),
                ("margin_pct", "Margin %"),
            ],
            css_id="margin",
            numeric=["tokens", "revenue", "cost", "margin", "margin_pct"],
        ),  # fmt: skip
        f'<p><a href="/customers/{e(c)}">Back to {name(data["name"])}</a></p>',
    ]
    return layout(
        f"Margin · {data['name']} · {data['period']}",
        "\n".join(body), active="/customers", json_url=json_url,
    )  # fmt: skip


def _tokens_and_searches(reason: Data) -> str:
    """``1,200 tokens`` and, when there are any, ``· 16 web searches`` (calls, apart)."""
    text = f"{num(reason['total'])} tokens"
    searches = int(reason.get("web_search") or 0)
    return f"{text} · {num(searches)} web searches" if searches else text


UNBILLED_ROWS = 200
"""Rows of each Unbilled table a page shows (the largest); the JSON twin has them all.
Months of traffic from hundreds of customers make tens of thousands of rows: megabytes of
HTML a browser takes seconds to lay out."""


def largest(rows: list[Data], measures: tuple[str, ...], limit: int | None) -> list[Data]:
    """The ``limit`` rows with the most of ``measures`` (compared in that order), in that
    order; all of them, in their order, when they fit."""
    if limit is None or len(rows) <= limit:
        return rows
    return sorted(rows, key=lambda r: tuple(-int(r[m] or 0) for m in measures))[:limit]


def sums(rows: list[Data], label: tuple[str, str], measures: tuple[str, ...]) -> Data:
    """A footer row: ``label`` (field, text) and the exact sum of each measure; none
    where a row does not know its figure (a backdated row's events)."""
    return {
        label[0]: label[1],
        **{
            m: None if any(r[m] is None for r in rows) else sum(int(r[m]) for r in rows)
            for m in measures
        },
    }


def _capped(rows: list[Data], shown: list[Data], what: str, json_url: str, totals: str) -> str:
    """Says what a capped table leaves out, which totals still count it, and where to read
    every row."""
    if len(shown) == len(rows):
        return ""
    return (
        f'<p class="muted capped" id="{what}-capped">The {len(shown):,} largest of '
        f"{len(rows):,} rows (most first); {totals} count all of them. Every row: "
        f'<a href="{e(json_url)}">JSON</a>, or '
        f'<a href="?{e(_query_with(json_url, rows="all"))}">show all rows</a> (slow).</p>'
    )


def _query_with(json_url: str, **params: str) -> str:
    """The page's query (read from its JSON link) with ``params`` added."""
    query = dict(parse_qsl(urlsplit(json_url).query))
    query.pop("format", None)
    return urlencode({**query, **params})


UNBILLED_MEASURES = ("total", "web_search", "events")


def unbilled_page(
    data: Data, catalog: Catalog, json_url: str, *, limit: int | None = UNBILLED_ROWS
) -> str:
    """``limit``: rows per table at most (the largest), ``None`` for all."""
    rng = data["range"]
    rows = largest(data["rows"], UNBILLED_MEASURES, limit)
    unpriced = largest(data["unpriced"], ("tokens",), limit)
    known = {c.name for c in catalog.consumers}
    body = [
        filters("/unbilled", rng, catalog, buckets=False),
        '<p class="muted">Usage nobody pays for: keys not in the catalog, consumers no '
        "customer lists, time outside every subscription, and covered usage no rate card "
        "of the plan prices. Money being lost.</p>",
        '<div class="stats">',
        *(
            stat(r["reason"], _tokens_and_searches(r), f"reason-{i}")
            for i, r in enumerate(data["reasons"])
        ),
        "</div>",
        "<h2>Not covered by a subscription</h2>",
        _capped(data["rows"], rows, "unbilled", json_url, "the figures above and the Total row"),
        table(
            rows,
            [
                ("reason", "Reason"),
                ("consumer", "Consumer"),
                ("key_fingerprint", "Key"),
                ("customer", "Customer"),
                ("provider", "Provider"),
                ("model", "Model"),
                ("total", "Tokens"),
                ("web_search", "Web searches"),
                ("events", "Events"),
            ],
            css_id="unbilled",
            numeric=["total", "web_search", "events"],
            cells={
                "consumer": lambda r: _usage_link(r, rng, known),
                "key_fingerprint": lambda r: _key_link(r, rng),
            },
            footer=sums(data["rows"], ("reason", "Total"), UNBILLED_MEASURES),
        ),  # fmt: skip
        _unknown_consumers_note(rows, known),
        "<h2>Covered, but no price in the plan</h2>",
        _capped(data["unpriced"], unpriced, "unpriced", json_url, "the figures at the top"),
        table(
            unpriced,
            [
                ("customer", "Customer"),
                ("plan", "Plan"),
                ("provider", "Provider"),
                ("model", "Model"),
                ("token_type", "Token type"),
                ("tokens", "Quantity"),  # tokens, or calls for web_search
            ],
            css_id="unpriced",
            numeric=["tokens"],
            cells={
                "customer": lambda r: (
                    f'<a href="/customers/{e(r["customer"])}">{name(r["customer"])}</a>'
                )
            },
        ),  # fmt: skip
    ]
    return layout("Unbilled usage", "\n".join(body), active="/unbilled", json_url=json_url)


def health_page(
    data: Data, catalog: Catalog, json_url: str, *, note: tuple[str, str] | None = None
) -> str:
    """``note``: (why the page is by day, the hourly JSON's URL)."""
    rng = data["range"]
    per_bucket = legible(data["series"], "provider")
    providers = sorted({str(r["provider"]) for r in per_bucket})  # one colour each on the page
    body = [
        filters("/health", rng, catalog),
        coarser_note(note),
        table(
            data["providers"],
            [
                ("provider", "Provider"),
                ("calls", "Calls"),
                ("calls_per_min", "Calls/min"),
                ("errors", "Errors"),
                ("error_pct", "Error %"),
                ("estimated_pct", "Estimated %"),
                ("ttft_p50_ms", "TTFT p50 ms"),
                ("ttft_p95_ms", "TTFT p95 ms"),
                ("ttft_p99_ms", "TTFT p99 ms"),
                ("latency_p50_ms", "Latency p50 ms"),
            ],
            css_id="providers",
            numeric=[
                "calls",
                "calls_per_min",
                "errors",
                "error_pct",
                "estimated_pct",
                "ttft_p50_ms",
                "ttft_p95_ms",
                "ttft_p99_ms",
                "latency_p50_ms",
            ],
        ),  # fmt: skip
        chart(
            "chart-calls",
            bars(
                per_bucket,
                rng,
                x="bucket",
                y="calls",
                color="provider",
                series=providers,
                title=f"Calls per {rng['bucket']} by provider",
                y_title="calls",
            ),
        ),  # fmt: skip
        chart(
            "chart-errors",
            bars(
                [r for r in per_bucket if r["errors"]],
                rng,
                x="bucket",
                y="errors",
                color="provider",
                series=providers,
                title=f"Errors per {rng['bucket']} by provider",
                y_title="errors",
            ),
        ),  # fmt: skip
    ]
    return layout("Proxy health", "\n".join(body), active="/health", json_url=json_url)
