"""Charts as Vega-Lite specs: drawn in the browser by vega-embed, or to SVG for documents.

Both come from one package, ``vl-convert-python``: it bundles Vega, Vega-Lite and
vega-embed (:func:`vega_bundle`, served by the dashboard from the package: no CDN) and
renders a spec to SVG without a browser (:func:`to_svg`, for statements and PDFs).
Specs carry their rows inline (``data.name = "table"``) so a test can read the series
a chart drew from the live view.
"""

from __future__ import annotations

import colorsys
import functools
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from billing import render

Spec = dict[str, Any]
TIME_UNITS = {"hour": "utcyearmonthdatehours", "day": "utcyearmonthdate"}
TIME_FORMATS = {"hour": "%d %b %H:00", "day": "%d %b"}
BUCKET_LENGTHS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
TICK_INTERVALS = {"hour": "hours", "day": "day"}
"""Vega's names of the buckets' time intervals (vega-time's units)."""
WHOLE_TICKS = 100
"""Up to this many buckets, a chart's time axis ticks once per bucket at most: left to
itself, Vega ticks a two-day range every 12 hours, labelling ``01 Dec`` twice (dashboard
charts and statements alike)."""
BASE_COLOURS = (
    "#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b",
    "#eeca3b", "#b279a2", "#ff9da6", "#9d755d", "#bab0ac",
    "#1f3f73", "#8c3d00", "#8f1d2c", "#2f6f6a", "#2b5e2b",
    "#8a6d00", "#6a3d8a", "#c2185b", "#5a3b22", "#5f5f5f",
)  # fmt: skip
"""Vega's ``tableau10`` (its default scheme, so small charts look as before), then ten
darker hues: twenty series apart by eye before :func:`palette` has to spread hues."""
LEGEND_TITLE = 20
LEGEND_ROW = 14
"""Pixels a legend's title and each of its entries take (Vega draws an entry of 10 px
text and a 100 px² symbol every 13 px, in Chromium and in vl-convert alike; one to spare)."""


def stacked_bars(
    rows: Sequence[dict[str, Any]],
    *,
    x: str,
    y: str,
    color: str,
    bucket: str,
    title: str | None,
    y_title: str = "tokens",
    width: int | str = "container",
    height: int = 240,
    span: tuple[datetime, datetime] | None = None,
    series: Sequence[str] | None = None,
) -> Spec:
    """Bars per time bucket, stacked by ``color``; rows are the query layer's, as JSON.

    ``span``: the time the chart covers: the x axis runs from its start to its end
    whatever buckets hold data (charts of one range line up), and when it holds few
    buckets, the axis ticks on bucket boundaries only, so no two labels read the same.
    ``series``: the ``color`` values to give colours to (default: those in ``rows``);
    charts of one page pass the same list so a series has one colour on the page. The
    legend names only the series in ``rows``.

    Every series has its own colour (:func:`palette`) and its own legend entry: the
    legend is one column beside the bars, and the bars grow taller than ``height`` when
    the legend needs it (the width fits the page or the image; Vega's ``fit-x`` leaves
    out of the view what a legend draws below the bars). A statement's reader checks
    tokens per model against the invoice's lines, so no model is folded into an "other"
    series or clipped off the image (a fixed height cut a 12-model legend after 9
    entries, and Vega's 10 colours gave the hidden models the colours of shown ones).
    """
    data = json.loads(render.to_json(list(rows)))
    drawn = sorted({str(r[color]) for r in data})
    names = sorted(set(drawn) | set(series or ()))
    axis: dict[str, Any] = {
        "format": TIME_FORMATS[bucket],
        "labelAngle": 0,
        "labelOverlap": True,
        "labelSeparation": 6,
    }
    if span is not None and (span[1] - span[0]) / BUCKET_LENGTHS[bucket] <= WHOLE_TICKS:
        axis["tickCount"] = {"interval": TICK_INTERVALS[bucket], "step": 1}
    x_scale = {} if span is None else {"scale": {"domain": [epoch_ms(t) for t in span]}}
    return {
        **({"title": title} if title else {}),
        "width": width,
        "autosize": {"type": "fit-x", "contains": "padding"},
        "padding": 14,
        "height": max(height, LEGEND_TITLE + LEGEND_ROW * len(drawn)),
        "data": {"name": "table", "values": data},
        "mark": {"type": "bar", "tooltip": True},
        "encoding": {
            "x": {
                "field": x,
                "type": "temporal",
                "timeUnit": TIME_UNITS[bucket],
                "title": None,
                "axis": axis,
                **x_scale,
            },
            "y": {"field": y, "type": "quantitative", "stack": "zero", "title": y_title},
            "color": {
                "field": color,
                "type": "nominal",
                "title": color.replace("_", " "),
                "scale": {"domain": names, "range": palette(len(names))},
                "legend": {
                    "orient": "right",
                    "columns": 1,
                    "values": drawn,
                    "symbolLimit": len(drawn),  # Vega-Lite's default drops entries past 30
                    "labelFontSize": 10,
                    "symbolSize": 100,
                },
            },
        },
        "config": {"view": {"stroke": None}, "font": "Helvetica, Arial, sans-serif"},
    }


def palette(count: int) -> list[str]:
    """``count`` distinct colours: :data:`BASE_COLOURS`, or beyond them hues spread
    evenly round the wheel at three lightnesses (neighbours differ in both)."""
    if count <= len(BASE_COLOURS):
        return list(BASE_COLOURS[:count])
    colours: list[str] = []
    for i in range(count):
        lightness = (0.35, 0.5, 0.65)[i % 3]
        red, green, blue = colorsys.hls_to_rgb(i / count, lightness, 0.7)
        colour = "#{:02x}{:02x}{:02x}".format(*(round(c * 255) for c in (red, green, blue)))
        colours.append(colour)
    return colours


def epoch_ms(t: datetime) -> int:
    """``t`` as Vega's time: milliseconds since 1970 (UTC)."""
    return int(t.timestamp() * 1000)


@functools.cache
def vega_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one script defining ``window.vegaEmbed``.

    Built by vl-convert from the JavaScript inside its wheel (about 2 s, once a process).
    """
    import vl_convert

    bundle = vl_convert.javascript_bundle(None)  # type: ignore[arg-type]  # None: no snippet
    return str(bundle)


def to_svg(spec: Spec) -> str:
    """The chart as a standalone SVG (text as text, so a PDF of it can be searched)."""
    import vl_convert

    return str(vl_convert.vegalite_to_svg(spec))
