"""The HTML building blocks: names shown with their control characters written out."""

from __future__ import annotations

import pytest

from billing.dashboard.html import table
from billing.shown import name, visible


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-\u202elnk.exe", "gpt-4o-\\u202elnk.exe"),  # right-to-left override
        ("a\x00b\x7f\u200bc\u2066d\u2069", "a\\u0000b\\u007f\\u200bc\\u2066d\\u2069"),
        ("line\nbreak\ttab", "line\\u000abreak\\u0009tab"),
        ("\U000e0001x", "\\U000e0001x"),  # a language tag, outside the BMP
        ("👨\u200d👩\u200d👧", "👨\u200d👩\u200d👧"),  # joiners draw one emoji: kept
        ("شركة الاختبار", "شركة الاختبار"),  # right-to-left letters are text
        ("Café\u00a0Zürich", "Café\u00a0Zürich"),  # a no-break space is no control
    ],
)
def test_visible(text: str, shown: str) -> None:
    assert visible(text) == shown


def test_names_are_isolated_and_escaped() -> None:
    assert name("<b>\u202e") == "<bdi>&lt;b&gt;\\u202e</bdi>"
    html = table([{"model": "m\u202e", "n": 3}], [("model", "M"), ("n", "N")], css_id="t")
    assert '<td data-field="model"><bdi>m\\u202e</bdi></td>' in html
    assert '<td data-field="n">3</td>' in html
