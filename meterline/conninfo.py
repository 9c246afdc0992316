"""Passwords out of what is shown: a lake locator is a PostgreSQL connection string.

``ducklake:postgres:dbname=meterline host=db user=meter password=...`` is how libpq takes
a password, and DuckDB repeats the whole string in its errors. Everything Meterline
prints about a store (log lines, ``billing`` errors) goes through :func:`shown`. Better
still, keep the password out of the locator: ``PGPASSWORD`` or ``~/.pgpass`` (libpq reads
both), as docs/fleet.md says.

A connection string given where a store is expected without ``ducklake:postgres:``
before it is refused by :func:`locator_problem` before DuckDB sees it: DuckDB takes it
for a file name and creates that file, named after the password.
"""

from __future__ import annotations

import re

MASK = "***"
#: The keywords whose value is a secret: libpq's ``password`` and ``sslpassword`` (the
#: client key's passphrase), PostgreSQL 18's ``oauth_client_secret``.
_SECRET_KEYWORDS = r"(?:ssl)?password|oauth_client_secret"
#: A value as libpq's conninfo parser reads it (docs: "Keyword/Value Connection Strings";
#: libpq's ``conninfo_parse``): after ``=`` and any blanks, either a quoted value (``'``
#: up to the next ``'`` not escaped by a backslash; left open, it runs to the end of the
#: line) or a bare one, which runs to the next blank not escaped by a backslash (a quote
#: inside it is a character of the password: ``password=Pg\ S3cret`` is "Pg S3cret",
#: ``password=Secret'Tail`` is "Secret'Tail"). Whatever is glued after a closing quote is
#: masked too (libpq refuses it; it may be the password's end). ``"..."`` is no libpq
#: quote but people write it: masked to its closing ``"`` as well.
_BARE = r"(?:[^\s\\]|\\[\s\S]|\\$)+"
_QUOTED = r"'(?:[^'\\\n]|\\.)*(?:'|$)|\"(?:[^\"\\\n]|\\.)*\""
_KEYWORD = re.compile(
    rf"(\b(?:{_SECRET_KEYWORDS})\s*=\s*)"
    # Masked already (a message shown again through the proxy's log filter): the ":" or
    # ")" after the mask stays.
    rf"(?:\*\*\*(?=[:)]?(?:\s|$))|(?:{_QUOTED})(?:{_BARE})?|{_BARE})",
    re.IGNORECASE | re.MULTILINE,
)
#: ``postgresql://user:password@host``: the password runs to the last ``@`` of the
#: authority (one left unencoded in it must not leave its end shown).
_URI = re.compile(r"(\bpostgres(?:ql)?://[^:/@\s]*:)[^\s/?#]*@", re.IGNORECASE)


def shown(text: str) -> str:
    """``text`` with every connection-string password replaced by ``***``."""
    lower = text.lower()
    if "password" not in lower and "://" not in lower and "secret" not in lower:
        return text
    return _URI.sub(r"\1" + MASK + "@", _KEYWORD.sub(r"\1" + MASK, text))


def one_line(text: str) -> str:
    """A DuckDB or PostgreSQL error as one line: its lines joined, PostgreSQL's query
    excerpt (``LINE 1: ...``) and caret line left out, passwords masked."""
    lines = [line.strip() for line in text.splitlines()]
    kept = [ln for ln in lines if ln and not ln.startswith(("LINE ", "^"))]
    return shown(" ".join(kept))


LAKE_PREFIX = "ducklake:"
#: The metadata type of a lake whose catalog is a PostgreSQL database.
POSTGRES_TYPE = "postgres:"

#: A libpq connection string: a URI, or ``keyword=value`` pairs starting with one of
#: libpq's keywords (a file named ``dbname=x`` is no store anyone means).
_PG_URI = re.compile(r"\s*postgres(?:ql)?://", re.IGNORECASE)
_PG_KEYWORDS = re.compile(
    r"\s*(?:host|hostaddr|port|dbname|user|password|passfile|service|sslmode|sslpassword"
    r"|connect_timeout|application_name|options|target_session_attrs)\s*=",
    re.IGNORECASE,
)


def is_conninfo(text: str) -> bool:
    """Whether ``text`` is a PostgreSQL connection string (a URI or keyword=value pairs)."""
    return bool(_PG_URI.match(text) or _PG_KEYWORDS.match(text))


def locator_problem(locator: str) -> str | None:
    """Why ``locator`` is a PostgreSQL connection string given the wrong way, in one line
    naming the right one (passwords masked); None for anything else (a DuckDB file, a
    ``ducklake:postgres:...`` lake).

    Given bare (``postgresql://...``, ``dbname=... password=...``) it was opened as a
    DuckDB file of that name; DuckDB's own ``postgres:...`` attached the PostgreSQL
    database itself, which holds no store; ``ducklake:`` without the ``postgres:``
    metadata type made a local DuckLake catalog file named after the connection string,
    password included."""
    if locator[: len(LAKE_PREFIX)].lower() == LAKE_PREFIX and not locator.startswith(LAKE_PREFIX):
        return _prefix_case_problem(locator)
    if locator.startswith(LAKE_PREFIX):
        rest = locator.removeprefix(LAKE_PREFIX)
        if rest.startswith(POSTGRES_TYPE) or not is_conninfo(rest):
            return None
        return (
            f"{shown(locator)}: no metadata type after {LAKE_PREFIX} (a lake on PostgreSQL "
            f"is given as {_as_lake(rest)})"
        )
    conninfo = locator
    if locator.lower().startswith(POSTGRES_TYPE):
        conninfo = locator[len(POSTGRES_TYPE) :]
    elif not is_conninfo(locator):
        return None
    return (
        f"{shown(locator)}: a PostgreSQL connection string, not a DuckDB file (a lake on "
        f"PostgreSQL is given as {_as_lake(conninfo)})"
    )


#: Metadata types whose catalog is a server's database, not a file here.
_SERVER_METADATA = (POSTGRES_TYPE, "mysql:", "md:", "motherduck:")
#: Metadata types whose catalog is a local file named after the type.
_FILE_METADATA = ("duckdb:", "sqlite:")


def local_lake_metadata(locator: str) -> str | None:
    """The local metadata file of a ``ducklake:...`` lake (``ducklake:typo.ducklake``,
    ``ducklake:sqlite:m.db``); None for a lake on a server, or a locator that is no lake."""
    if not locator.startswith(LAKE_PREFIX):
        return None
    rest = locator.removeprefix(LAKE_PREFIX)
    if rest.startswith(_SERVER_METADATA):
        return None
    for prefix in _FILE_METADATA:
        rest = rest.removeprefix(prefix)
    return rest


def _prefix_case_problem(locator: str) -> str:
    """``DuckLake:...``: the store code knows a lake by ``ducklake:`` as written, so any
    other spelling was opened as a DuckDB file named after it (a password included)."""
    rest = locator[len(LAKE_PREFIX) :]
    if rest[: len(POSTGRES_TYPE)].lower() == POSTGRES_TYPE:
        meant = _as_lake(rest[len(POSTGRES_TYPE) :])
    elif is_conninfo(rest):
        meant = _as_lake(rest)
    else:
        meant = shown(LAKE_PREFIX + rest)
    return f"{shown(locator)}: write {LAKE_PREFIX} in lower case (the store is given as {meant})"


def _as_lake(conninfo: str) -> str:
    return shown(f"{LAKE_PREFIX}{POSTGRES_TYPE}{conninfo.strip()}")
