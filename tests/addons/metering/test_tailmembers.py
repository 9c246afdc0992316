"""The members that end a JSON body, read from its last bytes only."""

from __future__ import annotations

import json

import pytest

from addons.metering.tailmembers import TailWindow, last_members, wrapped_members


@pytest.mark.parametrize(
    "tail,members",
    [
        pytest.param(
            b'AAAA"}],"model":"m","usage":{"prompt_tokens":8,"total_tokens":8}}',
            {"model": "m", "usage": {"prompt_tokens": 8, "total_tokens": 8}},
            id="embeddings-cut-in-the-data",
        ),
        pytest.param(
            b'"}]}}],\n  "usageMetadata": {"promptTokenCount": 20},\n  "modelVersion": "g"\n}\n',
            {"usageMetadata": {"promptTokenCount": 20}, "modelVersion": "g"},
            id="gemini-pretty-printed",
        ),
        pytest.param(
            b'"}]}}],"usageMetadata":{"promptTokenCount":3}}\r\n]',
            {"usageMetadata": {"promptTokenCount": 3}},
            id="the-last-element-of-an-array-stream",
        ),
        pytest.param(
            b'{"done":false}\n{"model":"llama3","done":true,"eval_count":5}\n',
            {"model": "llama3", "done": True, "eval_count": 5},
            id="ndjson-last-line",
        ),
        pytest.param(
            # Text that looks like members, inside a string: its quotes are escaped.
            b'abc,\\"usage\\":{\\"prompt_tokens\\":1}}"}}],"usage":{"prompt_tokens":9}}',
            {"usage": {"prompt_tokens": 9}},
            id="look-alike-members-inside-a-string",
        ),
        pytest.param(
            b'x,","k":"v,","usage":{"prompt_tokens":2}}',
            {"k": "v,", "usage": {"prompt_tokens": 2}},
            id="strings-ending-in-a-comma",
        ),
    ],
)
def test_last_members(tail: bytes, members: dict[str, object]) -> None:
    found = last_members(tail)
    assert found is not None and json.loads(found) == members


@pytest.mark.parametrize(
    "tail",
    [
        b'AAAAAAAAAAAAAAAA"}]}',  # no member starts in the tail
        b'{"usage":{"prompt_tokens":1}},"more":1',  # not the end of an object
        b'"a":{"usage":{"prompt_tokens":1}}}',  # a nested object's members (Responses)
        b"",
        b"   ",
    ],
)
def test_no_members(tail: bytes) -> None:
    assert last_members(tail) is None


def test_the_window_keeps_the_last_bytes() -> None:
    window = TailWindow(8)
    for piece in (b"0123", b"456789abcdef", b"gh", b"", b"ijklmnopqrstuvwxyz"):
        window.add(piece)
    assert window.bytes() == b"stuvwxyz"
    small = TailWindow(8)
    small.add(b"ab")
    assert small.bytes() == b"ab"


def test_the_members_of_a_wrapped_object() -> None:
    tail = b'AAA"}],"usage":{"input_tokens":5},"user":null,"metadata":{}}}'
    assert last_members(tail) is None
    inner = last_members(tail, depth=1)
    assert inner is not None and json.loads(inner)["usage"] == {"input_tokens": 5}
    assert last_members(b'{"a":1}', depth=1) is None


@pytest.mark.parametrize(
    "tail",
    [
        b'AAA"}],"usage":{"input_tokens":5},"user":null,"metadata":{}}}',
        b'AAA"}],"usage":{"input_tokens":5},"metadata":{}},"sequence_number":32}',
        b'AAA"}],"usage":{"input_tokens":5},"metadata":{}} , "sequence_number":32, "x":{}}',
    ],
    ids=["wrapped-value-last", "openai-order-sequence-last", "more-members-after"],
)
def test_the_members_of_the_wrapped_response(tail: bytes) -> None:
    inner = wrapped_members(tail)
    assert inner is not None and json.loads(inner)["usage"] == {"input_tokens": 5}
