"""How spooled JSON lines become rows of ``usage_events``: the SQL both stores share.

A line is read by DuckDB's ``read_json`` with explicit columns (parsed in C++, without the
GIL); a torn line, or one of the wrong shape, comes back as a row of NULLs, or with NULL
where a value had the wrong type, and :data:`VALID` leaves it out. :data:`SELECT` fills
the columns an older proxy did not write with their defaults and ``ingested_at`` with
``$ingested_at`` (the caller's SQL for it). The proxy's writer reads spool segments this
way (:mod:`addons.metering.batchsql`); a lake's staged lines are read the same way
(:mod:`meterline.lakestage`).
"""

from __future__ import annotations

from meterline.eventschema import EVENT_COLUMNS, REQUIRED_SPOOLED, SPOOL_DEFAULTS, SPOOL_TYPES
from meterline.sqltext import sql_string as sql_string  # re-exported


def read_options(columns: dict[str, str] = SPOOL_TYPES) -> str:
    """``read_json``'s options for lines holding ``columns`` (name -> DuckDB type)."""
    literal = "{" + ", ".join(f"'{c}': '{t}'" for c, t in columns.items()) + "}"
    return (
        f"format = 'newline_delimited', columns = {literal}, "
        "ignore_errors = true, maximum_object_size = 16777216"
    )


#: ``read_json``'s options for spooled lines.
READ_OPTIONS = read_options()
#: True for a line that is an event (every required field read, of its type).
VALID = " AND ".join(f"{c} IS NOT NULL" for c in REQUIRED_SPOOLED)
#: The events table's columns, in order, for ``INSERT INTO usage_events (...)``.
COLUMNS = ", ".join(EVENT_COLUMNS)
#: The row stored for a line, in :data:`COLUMNS`' order; ``$ingested_at`` is replaced.
SELECT = ", ".join(
    "$ingested_at"
    if c == "ingested_at"
    else f"coalesce({c}, {SPOOL_DEFAULTS[c]})"
    if c in SPOOL_DEFAULTS
    else c
    for c in EVENT_COLUMNS
)
