from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from addons.metering.spool import OPEN_SUFFIX, Spool, SpoolError


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
    spool.remove(segment)
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


# -- faults, injected at the OS boundary (the e2e versions are in tests/faults/) -------


class _Disk:
    """Stands in for ``os.write``/``os.open`` of the spool module: fails on demand."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import addons.metering.spool as spool_module

        self.real_write, self.real_open = os.write, os.open
        self.write_error: int | None = None
        self.short = 0  # bytes the next write writes before failing (torn line)
        self.open_error: int | None = None
        monkeypatch.setattr(spool_module.os, "write", self.write)
        monkeypatch.setattr(spool_module.os, "open", self.open)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self.short:
            n, self.short = self.short, 0
            return self.real_write(fd, bytes(data[:n]))
        if self.write_error is not None:
            raise OSError(self.write_error, os.strerror(self.write_error))
        return self.real_write(fd, data)

    def open(self, path: Any, flags: int, mode: int = 0o777) -> int:
        if self.open_error is not None and str(path).endswith(OPEN_SUFFIX):
            raise OSError(self.open_error, os.strerror(self.open_error))
        return self.real_open(path, flags, mode)


def _stored(spool: Spool) -> list[str]:
    return [e["event_id"] for p in spool.sealed() for e in Spool.read(p)]


def test_full_disk_holds_events_logs_once_and_writes_them_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    disk = _Disk(monkeypatch)
    spool = Spool(tmp_path, max_held=3)
    spool.append({"event_id": "a"})
    disk.write_error = errno.ENOSPC
    for name in "bcde":
        spool.append({"event_id": name})  # never raises
    assert (spool.held, spool.dropped) == (3, 1)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2  # the condition once, the first drop once
    assert "ENOSPC (No space left on device)" in errors[0]
    spool.seal()  # still full: nothing lost, nothing raised
    disk.write_error = None
    spool.seal()  # space is back: the held events are written, in order
    assert _stored(spool) == ["a", "b", "c", "d"]
    assert spool.held == 0
    spool.close()


def test_a_torn_line_loses_nothing_and_glues_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = _Disk(monkeypatch)
    spool = Spool(tmp_path)
    spool.append({"event_id": "a"})
    disk.short, disk.write_error = 7, errno.ENOSPC  # part of "b", then the disk is full
    spool.append({"event_id": "b"})
    disk.write_error = None
    spool.append({"event_id": "c"})
    spool.seal()
    first, second = (p.read_bytes() for p in spool.sealed())
    assert first == b'{"event_id":"a"}\n{"event'  # the torn segment was closed
    assert second == b'{"event_id":"b"}\n{"event_id":"c"}\n'  # b again, whole; c apart
    assert _stored(spool) == ["a", "b", "c"]
    spool.close()


def test_a_short_write_is_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = _Disk(monkeypatch)
    spool = Spool(tmp_path)
    disk.short = 3  # the kernel wrote 3 bytes; the rest follows in the next write
    spool.append({"event_id": "a"})
    spool.append({"event_id": "b"})
    spool.seal()
    assert _stored(spool) == ["a", "b"]
    spool.close()


def test_failed_seal_forgets_its_descriptor_and_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The descriptor is released before the rename: a failed rename cannot leave the
    spool writing into a number the process reuses (a client socket)."""
    spool = Spool(tmp_path)
    spool.append({"event_id": "a"})
    real_rename = Path.rename

    def refuse(self: Path, target: Any) -> Path:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(Path, "rename", refuse)
    spool.seal()
    assert spool._fd is None
    reused = os.open(os.devnull, os.O_WRONLY)  # likely the number the segment had
    try:
        spool.append({"event_id": "b"})  # a new segment: never the reused number
        assert spool._fd != reused
    finally:
        os.close(reused)
    monkeypatch.setattr(Path, "rename", real_rename)
    spool.seal()
    assert sorted(_stored(spool)) == ["a", "b"]
    spool.close()


def test_a_directory_that_stays_unwritable_is_logged_once_per_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An immutable directory fails each seal and each new segment in turn: each kind
    of fault is logged once until the spool is healthy, not at every flush."""
    spool = Spool(tmp_path)
    spool.append({"event_id": "a"})  # an open segment, so the first seal renames

    def refuse(self: Path, target: Any) -> Path:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(Path, "rename", refuse)
    disk = _Disk(monkeypatch)
    disk.open_error = errno.EPERM
    with caplog.at_level(logging.ERROR, logger="addons.metering.spool"):
        for n in range(20):
            spool.seal()
            spool.append({"event_id": f"e{n}"})
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2, errors
    assert "cannot seal a segment meterline-" in errors[0] and "EPERM" in errors[1]
    monkeypatch.undo()
    spool.seal()
    assert sorted(_stored(spool)) == sorted(["a", *(f"e{n}" for n in range(20))])
    spool.close()


def test_a_stored_segment_that_cannot_be_deleted_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path)
    spool.append({"event_id": "a"})
    spool.seal()
    [segment] = spool.sealed()

    def refuse(self: Path, missing_ok: bool = False) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(Path, "unlink", refuse)
    with caplog.at_level(logging.ERROR, logger="addons.metering.spool"):
        spool.remove(segment)
        spool.remove(segment)
    [line] = [r.getMessage() for r in caplog.records]
    assert "cannot delete a stored segment" in line and "EPERM" in line
    assert spool.known_events([segment]) is None  # the next flush reads it, finds it stored
    monkeypatch.undo()
    spool.close()


def test_a_removed_spool_directory_is_made_again_with_its_lock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``rm -rf`` of the spool under a running proxy: the open segment's lines go with it,
    but the spool makes its directory and lock again, so later events are kept (every
    one was lost) and a second proxy still cannot take the directory."""
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.append({"event_id": "gone", "ts": "2026-12-02T00:00:00"})
    shutil.rmtree(directory)
    with caplog.at_level(logging.ERROR, logger="addons.metering.spool"):
        spool.seal()
        spool.append({"event_id": "kept", "ts": "2026-12-02T00:00:01"})
    assert "was removed while the proxy ran: made again" in caplog.text
    assert directory.stat().st_mode & 0o777 == 0o700
    with pytest.raises(SpoolError, match="already in use"):
        Spool(directory)
    spool.seal()
    assert _stored(spool) == ["kept"] and spool.held == 0
    spool.close()


def test_open_fails_then_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = _Disk(monkeypatch)
    spool = Spool(tmp_path)
    disk.open_error = errno.EROFS
    spool.append({"event_id": "a"})
    assert spool.held == 1
    disk.open_error = None
    spool.seal()
    assert _stored(spool) == ["a"]
    spool.close()


def test_touches_only_its_own_files(tmp_path: Path) -> None:
    foreign = {"notes.txt": "x", "data.jsonl": '{"event_id":"x"}\n', "a.open": "y"}
    for name, text in foreign.items():
        (tmp_path / name).write_text(text)
    spool = Spool(tmp_path)
    spool.append({"event_id": "a"})
    spool.seal()
    [segment] = spool.sealed()
    assert segment.name.startswith("meterline-")
    spool.remove(segment)
    spool.close()
    assert {p.name: p.read_text() for p in tmp_path.iterdir() if p.name in foreign} == foreign
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*foreign, "meterline-spool.lock"])


def test_directories_it_creates_are_private_whatever_the_umask(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a").chmod(0o755)  # an existing directory is left as it is
    old = os.umask(0)
    try:
        spool = Spool(tmp_path / "a" / "b" / "c" / "spool")
    finally:
        os.umask(old)
    spool.close()
    modes = [(tmp_path / p).stat().st_mode & 0o777 for p in ("a", "a/b", "a/b/c", "a/b/c/spool")]
    assert modes == [0o755, 0o700, 0o700, 0o700]


def test_segments_are_private(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "new")
    spool.append({"event_id": "a"})
    [segment] = (tmp_path / "new").glob("*.open")
    assert segment.stat().st_mode & 0o077 == 0
    assert (tmp_path / "new").stat().st_mode & 0o077 == 0
    spool.close()


def test_segments_of_an_older_version_are_adopted_and_replayed(tmp_path: Path) -> None:
    """Before the ``meterline-`` prefix, segments were ``<ns>-<pid>-<seq>.open|.jsonl``
    beside ``spool.lock``: an upgraded proxy replays them; other files stay untouched."""
    (tmp_path / "spool.lock").write_bytes(b"")
    (tmp_path / "00000000000000000001-42-000001.jsonl").write_text('{"event_id":"old-1"}\n')
    (tmp_path / "00000000000000000002-42-000002.open").write_text('{"event_id":"old-2"}\n')
    (tmp_path / "notes.jsonl").write_text("not ours\n")
    spool = Spool(tmp_path)
    ids = [e["event_id"] for seg in spool.sealed() for e in Spool.read(seg)]
    assert ids == ["old-1", "old-2"]
    assert (tmp_path / "notes.jsonl").read_text() == "not ours\n"
    spool.close()


def test_legacy_names_without_the_old_lock_are_not_ours(tmp_path: Path) -> None:
    (tmp_path / "00000000000000000001-42-000001.jsonl").write_text('{"event_id":"x"}\n')
    spool = Spool(tmp_path)
    assert spool.sealed() == []
    assert (tmp_path / "00000000000000000001-42-000001.jsonl").exists()
    spool.close()


def test_the_spool_knows_the_events_it_wrote_whole(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append({"event_id": "a", "ts": "2026-03-01T12:00:00"})
    spool.append({"event_id": "b", "ts": "2026-03-01T12:00:01"})
    spool.seal()
    spool.append({"event_id": "c", "ts": "2026-03-01T12:00:02"})
    spool.seal()
    first, second = spool.sealed()
    assert spool.known_events([first, second]) == [
        ("a", "2026-03-01T12:00:00"),
        ("b", "2026-03-01T12:00:01"),
        ("c", "2026-03-01T12:00:02"),
    ]
    spool.append({"event_id": "d"})  # no ts: its segment must be read to know it
    spool.seal()
    third = spool.sealed()[-1]
    assert spool.known_events([first, third]) is None
    spool.remove(first)
    assert spool.known_events([first]) is None  # forgotten with its file
    spool.close()
    again = Spool(tmp_path)  # a previous process's segments: unknown
    assert again.known_events(again.sealed()) is None
    again.close()


def test_known_events_are_bounded_oldest_forgotten_first(tmp_path: Path) -> None:
    """A backlog on disk (the store down for long) costs no unbounded memory: past the
    bound the oldest segments' keys are forgotten, and those are read from the files."""
    spool = Spool(tmp_path)
    spool.max_known = 3
    for n in range(4):
        spool.append({"event_id": f"e{n}", "ts": "2026-03-01T12:00:00"})
        if n % 2:
            spool.seal()
    first, second = spool.sealed()
    assert spool.known_events([second]) is not None
    spool.append({"event_id": "e4", "ts": "2026-03-01T12:00:00"})
    spool.seal()  # 2 + 2 + 1 keys: over the bound, the first segment's go
    assert spool.known_events([first]) is None
    assert spool.known_events([second]) == [
        ("e2", "2026-03-01T12:00:00"),
        ("e3", "2026-03-01T12:00:00"),
    ]
    spool.remove(second)
    spool.close()
