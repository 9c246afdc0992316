"""Name the cause of a failed disk operation, as an operator needs to read it in a log.

``ENOSPC (No space left on device)`` says what to do; DuckDB wraps the same condition in
its own exception types and text, so :func:`describe` recognises those too.
"""

from __future__ import annotations

import errno
import os

from meterline.conninfo import one_line

#: What the C library says for each errno a full or read-only disk produces.
_STRERRORS = {
    code: os.strerror(code)
    for code in (
        errno.ENOSPC,
        errno.EROFS,
        errno.EDQUOT,
        errno.EPERM,
        errno.EACCES,
        errno.EIO,
        errno.ENOENT,
        errno.ENOTDIR,
    )  # fmt: skip
}


def describe(e: BaseException) -> str:
    """``ENOSPC (No space left on device)`` for an OSError; for another error (DuckDB's),
    its text, prefixed with the errno name when the text carries a known ``strerror``."""
    if isinstance(e, OSError) and e.errno is not None:
        name = errno.errorcode.get(e.errno, str(e.errno))
        return f"{name} ({e.strerror or os.strerror(e.errno)})"
    text = one_line(str(e))  # PostgreSQL's errors span lines (a hint, LINE 2: and a caret)
    for code, message in _STRERRORS.items():
        if message in text:
            return f"{errno.errorcode[code]}: {text}"
    return text
