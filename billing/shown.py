"""Names from the catalog and the traffic, shown as text that cannot deceive: control and
format characters written out (``\\u202e``), HTML escaped and isolated (``<bdi>``). Used by
the dashboard's pages and by the printed documents alike."""

import html
import unicodedata
from typing import Any

SHOWN_AS_IS = frozenset("\u200c\u200d")
"""Format characters kept: the zero-width (non-)joiners that emoji sequences and some
scripts need to draw right."""
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def _shown(char: str) -> str:
    if unicodedata.category(char) in HIDDEN_CATEGORIES and char not in SHOWN_AS_IS:
        code = ord(char)
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
    return char


def visible(text: str) -> str:
    """``text`` with its control and format characters written out (``\\u202e``): a
    model named ``gpt-4o-\\u202elnk.exe`` from traffic would otherwise show reversed
    (``gpt-4o-exe.knl``), and a NUL in a catalog name would reach the HTML."""
    if text.isprintable():
        return text
    return "".join(_shown(c) for c in text)


def name(value: object) -> str:
    """A name from the catalog or the traffic as HTML: control characters shown, escaped,
    and isolated (``<bdi>``) so right-to-left text cannot reorder what is around it."""
    return f"<bdi>{html.escape(visible(str(value)))}</bdi>"


def legible(rows: list[dict[str, Any]], field: str) -> list[dict[str, Any]]:
    """Chart rows with ``field`` as :func:`visible` writes it: a chart's legend and
    tooltips are SVG text, where a ``\\u202e`` in a model's name would reverse it."""
    return [r if str(r[field]).isprintable() else {**r, field: visible(str(r[field]))}
            for r in rows]  # fmt: skip
