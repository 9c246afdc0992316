from __future__ import annotations

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
