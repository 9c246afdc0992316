from __future__ import annotations

import tracemalloc

import pytest

from addons.metering.jsonspan import insert_member, object_members, value_end


def test_members_and_spans() -> None:
    data = b'{ "a" : [1, {"}": "]"}] , "b":"x\\"y", "a": null }'
    m = object_members(data, 0)
    assert [k for k, _, _ in m.spans] == [b'"a"', b'"b"', b'"a"']
    start, end = m.last_value("a")
    assert data[start:end] == b"null"
    assert insert_member(data, m, b'"c":1').endswith(b'null ,"c":1}')
    assert object_members(b"{}", 0).spans == []
    assert insert_member(b"{ }", object_members(b"{ }", 0), b'"c":1') == b'{ "c":1}'


@pytest.mark.parametrize("bad", [b"[1]", b'{"a" 1}', b'{"a":1 "b"}', b'{"a":"x'])
def test_unexpected_input(bad: bytes) -> None:
    with pytest.raises(ValueError):
        object_members(bad, 0)


def test_value_end_scalars() -> None:
    assert value_end(b"1e400,", 0) == 5
    assert value_end(b'"\\u00e9"]', 0) == 8


def test_a_long_string_is_scanned_in_constant_memory() -> None:
    """The alternation ``(?:[^"\\]|\\.)*`` kept regex state per byte: a 4 MB string took
    580 MB (a 21 MB image in a streaming request, 2.7 GB and a 7 s stall)."""
    text = b'{"image": "' + b"A" * 4_000_000 + b'\\u00e9", "n": [1]}'
    tracemalloc.start()
    try:
        members = object_members(text, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [raw for raw, _, _ in members.spans] == [b'"image"', b'"n"']
    assert peak < 1_000_000
