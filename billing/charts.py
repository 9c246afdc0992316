"""Charts as Vega-Lite specs: drawn in the browser by vega-embed, or to SVG for documents.

Both come from one package, ``vl-convert-python``: it bundles Vega, Vega-Lite and
vega-embed (:func:`vega_bundle`, served by the dashboard from the package: no CDN) and
renders a spec to SVG without a browser (:func:`to_svg`, for statements and PDFs).
Specs carry their rows inline (``data.name = "table"``) so a test can read the series
a chart drew from the live view.
"""

from __future__ import annotations

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
) -> Spec:
    """Bars per time bucket, stacked by ``color``; rows are the query layer's, as JSON.
    ``span``: the time the chart covers; when it holds few buckets, the axis ticks on
    bucket boundaries only, so no two labels read the same."""
    data = json.loads(render.to_json(list(rows)))
    axis: dict[str, Any] = {
        "format": TIME_FORMATS[bucket],
        "labelAngle": 0,
        "labelOverlap": True,
        "labelSeparation": 6,
    }
    if span is not None and (span[1] - span[0]) / BUCKET_LENGTHS[bucket] <= WHOLE_TICKS:
        axis["tickCount"] = {"interval": TICK_INTERVALS[bucket], "step": 1}
    return {
        **({"title": title} if title else {}),
        "width": width,
        "autosize": {"type": "fit", "contains": "padding"},
        "padding": 14,
        "height": height,
        "data": {"name": "table", "values": data},
        "mark": {"type": "bar", "tooltip": True},
        "encoding": {
            "x": {
                "field": x,
                "type": "temporal",
                "timeUnit": TIME_UNITS[bucket],
                "title": None,
                "axis": axis,
            },
            "y": {"field": y, "type": "quantitative", "stack": "zero", "title": y_title},
            "color": {"field": color, "type": "nominal", "title": color.replace("_", " ")},
        },
        "config": {"view": {"stroke": None}, "font": "Helvetica, Arial, sans-serif"},
    }


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
