from __future__ import annotations

from pathlib import Path

import pytest

from addons.metering.spool import Spool, SpoolError


def test_append_seal_read_remove(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    assert spool.append({"event_id": "a", "n": 1}) == 1
    assert spool.append({"event_id": "b", "n": 2}) == 2
    assert spool.sealed() == []
    spool.seal()
    [segment] = spool.sealed()
    assert [e["event_id"] for e in Spool.read(segment)] == ["a", "b"]
    assert spool.append({"event_id": "c"}) == 1  # a new segment
    spool.seal()
    assert len(spool.sealed()) == 2
    Spool.remove(segment)
    [rest] = spool.sealed()
    assert [e["event_id"] for e in Spool.read(rest)] == ["c"]
    spool.close()


def test_one_proxy_per_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(SpoolError, match="already in use"):
        Spool(tmp_path)
    spool.close()
    Spool(tmp_path).close()


def test_leftovers_of_a_killed_proxy_are_sealed_and_torn_lines_skipped(tmp_path: Path) -> None:
    (tmp_path / "meterline-00000000000000000001-42-000001.open").write_bytes(
        b'{"event_id":"x"}\n{"event_id":"y"}\n{"event_id":"tor'
    )
    spool = Spool(tmp_path)
    [segment] = spool.sealed()
    assert [e["event_id"] for e in Spool.read(segment)] == ["x", "y"]
    spool.close()


def test_unusable_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SpoolError, match="cannot use as spool"):
        Spool(blocker / "spool")
