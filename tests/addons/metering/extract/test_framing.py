from __future__ import annotations

import json

import pytest

from addons.metering.extract import framing
from addons.metering.extract.framing import (
    JsonBodyExtractor,
    LazyText,
    as_int,
    has_value,
    iter_json_values,
    note,
)
from addons.metering.extract.openai import OpenAIReader


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('{"usage":{"a":1}}', True),
        ('{"usage" : \n {"a":1}}', True),
        ('{"usage":null}', False),
        ('{"usage": null, "x": 1}', False),
        ('{"choices":[]}', False),
        ('{"content":"the \\"usage\\": field"}', False),  # escaped quotes inside a string
        ('{"usage":null,"x_groq":{"usage":{"prompt_tokens":1}}}', True),  # second occurrence
        ('{"usage":0}', True),
        ('{"usage"', False),
    ],
)
def test_has_value(data: str, expected: bool) -> None:
    assert has_value(data, '"usage"') is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(3, 3), (3.0, 3), (3.5, None), (None, None), ("3", None), (True, None), ([], None)],
)
def test_as_int(value: object, expected: int | None) -> None:
    assert as_int(value) == expected


@pytest.mark.parametrize(
    ("text", "values", "problem"),
    [
        ('{"a": 1}', [{"a": 1}], None),
        ("  [1, 2 ,\r\n 3]  ", [1, 2, 3], None),
        ("[]", [], None),
        ('[{"a": 1},\n{"b": 2', [{"a": 1}], "invalid or truncated JSON"),
        ('[{"a": 1},\n', [{"a": 1}], "truncated JSON array"),
        ('{"a": 1}\n{"a": 2}\n', [{"a": 1}, {"a": 2}], None),  # NDJSON
        ("[1] x", [1], "bytes after the end"),
        ("", [], None),
        ("nope", [], "invalid or truncated JSON"),
    ],
)
def test_iter_json_values(text: str, values: list, problem: str | None) -> None:
    problems: list[str] = []
    assert list(iter_json_values(text, problems)) == values
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0]


def test_note_bounds_and_truncates() -> None:
    problems: list[str] = []
    for _ in range(50):
        note(problems, "x" * 500)
    assert len(problems) == framing.MAX_PROBLEMS + 1
    assert all(len(p) <= 200 for p in problems)


def test_lazy_text_decodes_only_on_demand_and_compacts() -> None:
    calls = []

    def extract(obj: dict) -> str:
        calls.append(obj)
        return obj["t"]

    problems: list[str] = []
    lazy = LazyText(extract, problems, "chunk")
    piece = json.dumps({"t": "ab", "pad": "p" * 1000})
    n = framing.LAZY_TEXT_COMPACT_AT // len(piece) + 5
    lazy.add_raw(piece)
    assert calls == []  # nothing decoded while feeding small amounts
    for _ in range(n - 1):
        lazy.add_raw(piece)
    assert calls  # compaction decoded the raw strings once past the limit
    lazy.add_obj({"t": "!"})
    lazy.add_raw("{broken")
    assert lazy.text() == "ab" * n + "!"
    assert len(problems) == 1 and "invalid JSON in chunk" in problems[0]


def test_lazy_text_of_an_endless_stream_is_bounded_and_decoded_once() -> None:
    """A stream that never ends (a hostile upstream, a runaway model) kept all its text
    and re-joined it at each compaction: 600 MB took 90 s of CPU and +398 MiB in a
    probe. Each raw string is now decoded once, and the text stops at MAX_KEPT_TEXT."""
    decoded = 0

    def extract(obj: dict) -> str:
        nonlocal decoded
        decoded += 1
        return obj["t"]

    lazy = LazyText(extract, [], "chunk")
    piece = json.dumps({"t": "0123456789" * 10, "pad": "p" * 900})  # 100 characters of text
    fed = 3 * framing.MAX_KEPT_TEXT // 100
    for _ in range(fed):
        lazy.add_raw(piece)
    text = lazy.text()
    assert len(text) == framing.MAX_KEPT_TEXT and set(text) == set("0123456789")
    assert decoded <= framing.MAX_KEPT_TEXT // 100 + framing.LAZY_TEXT_COMPACT_AT // len(piece) + 1
    lazy.add_obj({"t": "more"})
    assert lazy.text() == text  # full: nothing more kept


def test_json_body_over_limit_is_not_metered() -> None:
    ext = JsonBodyExtractor(OpenAIReader, max_bytes=10)
    ext.feed(b'{"usage": {"prompt_tokens": 1}}')
    assert ext.finish() is None
    assert ext.output_text() == ""
    assert ext.problems == ["JSON body over 10 bytes: not metered"]


def test_json_body_feed_after_finish_reparses() -> None:
    ext = JsonBodyExtractor(OpenAIReader)
    ext.feed(b'{"usage": {"prompt_tokens": 1,')
    assert ext.finish() is None
    ext.feed(b' "completion_tokens": 2}}')
    usage = ext.finish()
    assert usage is not None and (usage.input, usage.output) == (1, 2)
