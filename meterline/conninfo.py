"""Passwords out of what is shown: a lake locator is a PostgreSQL connection string.

``ducklake:postgres:dbname=meterline host=db user=meter password=...`` is how libpq takes
a password, and DuckDB repeats the whole string in its errors. Everything Meterline
prints about a store (log lines, ``billing`` errors) goes through :func:`shown`. Better
still, keep the password out of the locator: ``PGPASSWORD`` or ``~/.pgpass`` (libpq reads
both), as docs/fleet.md says.
"""

from __future__ import annotations

import re

MASK = "***"
_KEYWORD = re.compile(r"(\b(?:ssl)?password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s'\"]+)", re.IGNORECASE)
_URI = re.compile(r"(\bpostgres(?:ql)?://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE)


def shown(text: str) -> str:
    """``text`` with every connection-string password replaced by ``***``."""
    lower = text.lower()
    if "password" not in lower and "://" not in lower:  # sslpassword too
        return text
    return _URI.sub(r"\1" + MASK + "@", _KEYWORD.sub(r"\1" + MASK, text))


def one_line(text: str) -> str:
    """A DuckDB or PostgreSQL error as one line: its lines joined, PostgreSQL's query
    excerpt (``LINE 1: ...``) and caret line left out, passwords masked."""
    lines = [line.strip() for line in text.splitlines()]
    kept = [ln for ln in lines if ln and not ln.startswith(("LINE ", "^"))]
    return shown(" ".join(kept))
