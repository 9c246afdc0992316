"""The hot path's JSON codec: orjson's speed, the standard library's answers."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal

import pytest

from addons.metering import jsoncodec


@pytest.mark.parametrize(
    "raw",
    [
        b'{"usage": {"prompt_tokens": 5}}',
        b'{"a": NaN, "b": Infinity}',  # orjson refuses, the standard library takes
        b'{"s": "\\udcff"}',  # a lone surrogate escape
        b'\xef\xbb\xbf{"bom": 1}',  # a byte-order mark
        b'{"n": 9223372036854775807, "a": 1, "a": 2}',
        '{"text": "caf\u00e9"}',
    ],
)
def test_loads_agrees_with_the_standard_library(raw: bytes | str) -> None:
    assert repr(jsoncodec.loads(raw)) == repr(json.loads(raw))


def test_loads_raises_value_error_like_json() -> None:
    with pytest.raises(ValueError):
        jsoncodec.loads(b'{"cut": ')
    with pytest.raises(ValueError):
        jsoncodec.loads(b"NaN garbage")
    with pytest.raises(ValueError):  # json.loads would raise RecursionError
        jsoncodec.loads(b"[" * 100_000 + b"]" * 100_000)


def test_an_integer_past_64_bits_is_still_a_number() -> None:
    assert jsoncodec.loads(b'{"n": 18446744073709551616}')["n"] == pytest.approx(2.0**64)


@pytest.mark.parametrize(
    "obj",
    [
        {"event_id": "openai:chatcmpl-1@req_1", "input_tokens": 5, "estimated": False, "x": None},
        {"model": "caf\u00e9 \u2603", "latency_ms": 1.234},
        {"lone": "\udcff", "big": 2**70},  # orjson refuses both: the standard library writes them
        {"when": datetime(2026, 12, 1, 15, 0), "amount": Decimal("1.10")},  # default=str
    ],
)
def test_dumps_line_is_one_json_line_that_reads_back(obj: dict[str, object]) -> None:
    line = jsoncodec.dumps_line(obj)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    back = json.loads(line.decode("utf-8", "surrogateescape"))
    expected = json.loads(json.dumps(obj, default=str))
    assert back == expected
