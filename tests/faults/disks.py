"""Disks that fail for real: a small tmpfs that fills up, an immutable directory.

Both need root (the suite runs as root in CI). Where the kernel refuses (no
CAP_SYS_ADMIN for ``mount``, no CAP_LINUX_IMMUTABLE for ``chattr``) the e2e test is
skipped with the reason, and the same faults stay covered by injected ``OSError``s in
tests/addons/metering/test_spool.py.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.recordings import in_ci


def unavailable(reason: str) -> None:
    """Skip a disk-fault test where the machine cannot stage the fault (not root, no
    tmpfs, no ``chattr``); CI runs as root, where that is a broken build, not a skip."""
    if in_ci():
        pytest.fail(f"{reason}: CI must run the disk-fault tests")
    pytest.skip(reason)


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        unavailable(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Write a file in ``path`` until its filesystem is full; returns the file."""
    filler = path / "filler"
    block = b"\0" * 4096
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, block)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)
    return filler


@contextmanager
def immutable(path: Path) -> Iterator[Path]:
    """``chattr +i path`` (no file may be created, renamed or deleted in it) for a while."""
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        unavailable(f"cannot make a directory immutable here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
