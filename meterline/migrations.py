"""The store's schema migrations: the events table's, and how any package's are applied.

Each package names its migrations in ``schema_migrations`` (the events table's numbered
below :data:`EVENTS_NUMBERED_BELOW`, billing's and the packages' beside it from there);
:func:`migrate` applies those not recorded, each in its own transaction, and refuses a
store a newer Meterline migrated (:class:`NewerStore`). Every migration is idempotent
(``IF NOT EXISTS``): the proxies of a fleet may apply one at the same moment.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import duckdb

from meterline.eventschema import EVENT_COLUMNS
from meterline.store import StoreError

log = logging.getLogger("meterline.store")


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str


EVENT_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "0001_usage_events",
        """
        CREATE TABLE IF NOT EXISTS usage_events (
            event_id            VARCHAR NOT NULL,  -- '<provider>:<response id>' or 'ml:<uuid>'
            ts                  TIMESTAMP NOT NULL,  -- UTC, when the response completed
            ingested_at         TIMESTAMP NOT NULL,  -- UTC, when the batch reached the store
            consumer            VARCHAR,             -- NULL: key not in the catalog
            key_fingerprint     VARCHAR,             -- sha256:<hex> of the key; never the key
            provider            VARCHAR NOT NULL,
            flavor              VARCHAR NOT NULL,    -- openai | anthropic | gemini
            model               VARCHAR,             -- as the provider reported it
            input_tokens        BIGINT NOT NULL,     -- uncached input
            cached_input_tokens BIGINT NOT NULL,     -- input read from the provider's cache
            cache_write_tokens  BIGINT NOT NULL,     -- input written to the provider's cache
            output_tokens       BIGINT NOT NULL,     -- all output, reasoning included
            reasoning_tokens    BIGINT NOT NULL,     -- share of output_tokens, not added to it
            estimated           BOOLEAN NOT NULL,    -- tokens counted by tiktoken, not reported
            response_id         VARCHAR,             -- provider's id: chatcmpl-..., msg_...
            request_id          VARCHAR,             -- provider's request id header
            method              VARCHAR NOT NULL,
            host                VARCHAR NOT NULL,
            path                VARCHAR NOT NULL,
            status              INTEGER,             -- NULL: no response (stream cut, error)
            streamed            BOOLEAN NOT NULL,
            latency_ms          DOUBLE,              -- request sent -> response complete
            ttft_ms             DOUBLE,              -- request sent -> first body byte
            proxy_id            VARCHAR              -- which proxy recorded it
        )
        """,
    ),
    Migration(
        "0010_event_reason",
        # Why the proxy refused a call itself (limit:<feature>, credits, not_granted,
        # unavailable): such events have zero tokens. NULL for forwarded calls.
        "ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS reason VARCHAR",
    ),
    Migration(
        "0020_cache_write_1h",
        # Anthropic's 1-hour cache writes, priced at 2x base input against 1.25x for the
        # 5-minute ones: counted apart. Stored events (all in cache_write_tokens) read 0.
        "ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS cache_write_1h_tokens BIGINT DEFAULT 0",
    ),
    Migration(
        "0030_audio_tokens",
        # Audio is priced apart (GPT-4o Audio: $40 per million input tokens against $2.50
        # for text): counted apart from input and output. Stored events read 0 (their
        # audio is inside input_tokens and output_tokens).
        "ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS audio_input_tokens BIGINT DEFAULT 0;\n"
        "ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS audio_output_tokens BIGINT DEFAULT 0",
    ),
    Migration(
        "0040_web_search_calls",
        # Server-side web searches are billed per call on top of tokens (Anthropic: $10
        # per 1,000): counted per event. Stored events read 0 (their searches were not
        # metered).
        "ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS web_search_calls BIGINT DEFAULT 0",
    ),
    Migration(
        "0050_cached_audio_input",
        # Cached audio is priced apart from cached text (gpt-realtime-mini: $0.30 per
        # million against $0.06; Gemini 2.5 Flash $0.10 against $0.03): counted apart.
        # Stored events read 0 (their cached audio is inside cached_input_tokens).
        "ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS cached_audio_input_tokens BIGINT "
        "DEFAULT 0",
    ),
    Migration(
        "0060_service_tier",
        # The tier the provider served the call at (OpenAI flex is about half the default
        # price, priority up to twice): features may price tiers apart. Stored events read
        # NULL (not reported), which features match as the standard tier.
        "ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS service_tier VARCHAR",
    ),
    Migration(
        "0070_speed_inference_geo",
        # Anthropic bills a fast-mode call at a multiple of every rate (Opus 4.6: 6x) and a
        # US-only one at 1.1x: features may price them apart. Stored events read NULL (not
        # reported), which features match as standard speed and global inference.
        "ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS speed VARCHAR;\n"
        "ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS inference_geo VARCHAR",
    ),
)


#: The lake's maintenance lease table (:mod:`meterline.lakelease`, which names its
#: migration with this): recorded in the same ``schema_migrations`` as the events'.
LAKE_LEASE_MIGRATION = "0001_lake_leases"

#: The events table's migrations are numbered below this; the tables of billing and of
#: the packages beside it from here on (0101 invoices, 0201 credit grants, 0301 alerts).
EVENTS_NUMBERED_BELOW = "0100"


class NewerStore(StoreError):
    """The store records migrations this code does not know: a newer Meterline migrated
    it. Writing to it could leave out what that version added (a token type counted in a
    new column: events this code writes would read 0 there, and be billed too little)."""


def newer_store(
    names: Sequence[str], where: str = "the store", *, lacking: Sequence[str] = ()
) -> NewerStore:
    """``lacking``: migrations of this version the store has not applied either (reading
    it would need them applied, a write)."""
    also = f" and lacks some of this version's ({', '.join(lacking)})" if lacking else ""
    action = "read it" if lacking else "write to it"
    return NewerStore(
        f"{where} was migrated by a newer Meterline (migrations this version does not know: "
        f"{', '.join(names)}){also}: upgrade Meterline to {action}"
    )


def unknown_migrations(done: Collection[str], known: Collection[str]) -> list[str]:
    """The recorded migration names ``done`` that are not in ``known``, sorted."""
    return sorted(set(done).difference(known))


def migrate(
    con: duckdb.DuckDBPyConnection,
    migrations: Sequence[Migration],
    *,
    known: Collection[str] | None = None,
) -> list[str]:
    """Apply the named migrations not yet applied, in order; returns the names applied.

    :class:`NewerStore`, nothing applied, when the store records a migration ``known``
    lacks. ``known`` defaults to the events table's, judged in their numbering
    (:data:`EVENTS_NUMBERED_BELOW`): the proxy's writer, which knows no billing table,
    must not write events to a store whose events table a newer Meterline changed.

    On a DuckLake, proxies of a fleet may migrate at the same moment: the one whose commit
    conflicts reads what the other applied and carries on.
    """
    for attempt in range(20):
        try:
            return _migrate_once(con, migrations, known)
        except duckdb.TransactionException:
            if attempt == 19:
                raise
            time.sleep(0.01 * (attempt + 1) * (1 + random.random()))
    raise AssertionError("unreachable")


def _known_events_migrations(migrations: Sequence[Migration], done: Collection[str]) -> set[str]:
    """Every recorded name outside the events' numbering, and the event (and lease)
    migrations this code has: what :func:`migrate` takes as known by default."""
    known = {m.name for m in (*EVENT_MIGRATIONS, *migrations)} | {LAKE_LEASE_MIGRATION}
    return known | {name for name in done if name[:4] >= EVENTS_NUMBERED_BELOW}


def _migrate_once(
    con: duckdb.DuckDBPyConnection,
    migrations: Sequence[Migration],
    known: Collection[str] | None,
) -> list[str]:
    """Apply the migrations not yet recorded, each in its own transaction.

    On a lake, two processes starting at once can both apply one migration: their
    commits do not conflict (appends to ``schema_migrations``, ``IF NOT EXISTS`` DDL), so
    the name may be recorded twice (an independent probe: 1 of 3 rounds of two proxies).
    Every migration must therefore be idempotent; one that is not (a backfill
    ``UPDATE``) needs a lease first."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
    )
    done = {r[0] for r in con.execute("SELECT name FROM schema_migrations").fetchall()}
    newer = unknown_migrations(
        done, _known_events_migrations(migrations, done) if known is None else known
    )
    if newer:
        raise newer_store(newer)
    applied = []
    for m in migrations:
        if m.name in done:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(m.sql)
            con.execute("INSERT INTO schema_migrations VALUES (?, now()::TIMESTAMP)", [m.name])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        applied.append(m.name)
    if migrations and migrations[0] == EVENT_MIGRATIONS[0]:
        _restore_event_columns(con)
    return applied


def _restore_event_columns(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Add back the schema's columns the events table lacks although the migrations that
    add them are recorded; returns them (none: the usual case, one ``DESCRIBE``).

    CI met it once on a brand-new lake: three writers migrating it at once while a
    maintenance pass ran, and every writer's flush then failed on a missing ``reason``
    column whose migration was recorded (kept in the spool and retried, but a table in
    that state would fail every flush for good: the migrations, recorded, never ran
    again). Each event migration is idempotent, so all of them are applied again, in one
    transaction."""
    have = {r[0] for r in con.execute("SELECT column_name FROM (DESCRIBE usage_events)").fetchall()}
    missing = [name for name in EVENT_COLUMNS if name not in have]
    if not missing:
        return []
    con.execute("BEGIN TRANSACTION")
    try:
        for m in EVENT_MIGRATIONS:
            con.execute(m.sql)
        con.execute("COMMIT")
    except Exception:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise
    log.warning(
        "meterline: the events table lacked %s although its migrations are recorded: added again",
        ", ".join(missing),
    )
    return missing
