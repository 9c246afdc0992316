"""An empty (0-byte) store file is a store not yet created.

Two ways to get one: DuckDB creates the file, then its writes of the headers fail (a full
disk: ENOSPC), or an operator makes it in advance (``touch meterline.duckdb``, a file for
a container's bind mount). DuckDB refuses such a file for good ("exists, but it is not a
valid DuckDB database file"), so every flush failed and nothing was ever stored again.

A writer therefore fills an empty file with a fresh database's bytes, in place: the
inode, owner and mode stay (a bind-mounted file cannot be renamed over), and nothing
else is ever touched: a file with any content is left to DuckDB to accept or refuse.
Readers and ``billing`` say "no such database" of it, as of a missing file.

Concurrent openers are kept out by the lock DuckDB itself uses (``fcntl``, the whole
file): a DuckDB process creating or holding the file has it locked, so the fill is
skipped and that opener's lock error is waited out as usual; while the fill runs, a
DuckDB opener finds the file locked and waits likewise.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
from pathlib import Path

import duckdb


class FillError(OSError):
    """The empty file could not be filled (a disk still full): it is left empty."""


def is_empty_file(path: str | Path) -> bool:
    """``path`` is a regular file of 0 bytes (a missing one is not)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_size == 0 and stat.S_ISREG(st.st_mode)


def fresh_database() -> bytes:
    """The bytes of a new, empty DuckDB database (its headers), made by DuckDB itself."""
    with tempfile.TemporaryDirectory(prefix="meterline-new-") as tmp:
        path = os.path.join(tmp, "new.duckdb")
        duckdb.connect(path).close()
        return Path(path).read_bytes()


def fill_if_empty(path: str) -> bool:
    """Write a fresh database into ``path`` if it is an empty file no one holds.

    Returns True if it did. A locked file (another process creating or reading it) is
    left alone: the caller's DuckDB open then meets that lock and waits it out. Raises
    :class:`FillError` if the write failed; the file is then empty again.
    """
    # stat before any open: closing a descriptor drops every fcntl lock this process
    # holds on the file, DuckDB's own included, so a file in use is never opened here.
    if not is_empty_file(path):
        return False
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False  # gone, or not writable: DuckDB's open says what is wrong
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EAGAIN):
                return False  # held: a DuckDB opener, waited out by the caller's retry
            raise
        # Still empty, and still the file at ``path``: not filled meanwhile by another
        # writer that had the lock first, nor replaced by a new one.
        st = os.fstat(fd)
        try:
            same = os.stat(path)
        except OSError:
            return False
        if st.st_size != 0 or (st.st_dev, st.st_ino) != (same.st_dev, same.st_ino):
            return False
        _write_all(fd, fresh_database(), path)
        return True
    finally:
        os.close(fd)  # releases the lock


def _write_all(fd: int, data: bytes, path: str) -> None:
    """Write ``data`` at the start of the empty file ``fd``, durably, or leave it empty."""
    try:
        view = memoryview(data)
        offset = 0
        while offset < len(view):
            offset += os.pwrite(fd, view[offset:], offset)
        os.fsync(fd)
    except OSError as e:
        # A part of the headers is a file with content that is no database: DuckDB
        # would refuse it and no one could tell it from a damaged store. Empty it again.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        raise FillError(e.errno, e.strerror, path) from e
