"""Files that hold usage events are private to the proxy's user (0600).

DuckDB creates its database and WAL files with the process umask and has no option for
their mode, so a writer tightens the umask while it works (:func:`private_files`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_umask_lock = threading.Lock()
_umask_users = 0
_saved_umask = 0


@contextmanager
def private_files() -> Iterator[None]:
    """Files created meanwhile (DuckDB's database and WAL hold events) are 0600.

    DuckDB has no mode option, so the process umask is tightened to 077 while any thread
    is inside (counted, so nested and concurrent users restore it once). Other threads'
    files created meanwhile are only made more private than asked.
    """
    global _umask_users, _saved_umask
    with _umask_lock:
        if _umask_users == 0:
            _saved_umask = os.umask(0o077)
        _umask_users += 1
    try:
        yield
    finally:
        with _umask_lock:
            _umask_users -= 1
            if _umask_users == 0:
                os.umask(_saved_umask)


def make_private(path: str) -> None:
    """A database (and WAL) file created before this rule (0644) becomes 0600, if ours."""
    for name in (path, path + ".wal"):
        try:
            st = os.stat(name)
            if st.st_mode & 0o077 and st.st_uid == os.getuid():
                os.chmod(name, st.st_mode & 0o700)
        except OSError:
            pass
