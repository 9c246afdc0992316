"""Whether a DuckDB error says a lake's PostgreSQL catalog connection was lost or refused.

DuckLake reaches its catalog through the postgres extension, whose errors carry libpq's
text: a backend terminated (a restart, a failover, ``pg_terminate_backend``) or a server
that no longer answers arrives as the base ``duckdb.Error``, a ``TransactionException``
or an ``IOException``, depending on the statement it broke. The class says nothing;
libpq's wording does, and it is the same whichever statement met it.
"""

from __future__ import annotations

#: libpq's and PostgreSQL's own wording for a connection that died or could not be made.
LOST_CONNECTION_TEXTS = (
    "server closed the connection unexpectedly",
    "terminating connection due to",  # administrator command, idle timeout, conflict
    "no connection to the server",
    "could not connect to server",
    "could not receive data from server",
    "could not send data to server",
    "SSL connection has been closed unexpectedly",
    "the database system is shutting down",
    "the database system is starting up",
)
#: ``connection to server at "host" (addr), port N failed: Connection refused``
_REFUSED = ("connection to server", "failed")

HINT = (
    "the lake's catalog (PostgreSQL) went away or refused the connection: check that it "
    "is up and reachable, then run the command again"
)


def lost_connection(error: str) -> bool:
    """``error`` (a DuckDB error's text) says the catalog connection died or was refused."""
    if any(text in error for text in LOST_CONNECTION_TEXTS):
        return True
    return all(part in error for part in _REFUSED)
