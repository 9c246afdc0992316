"""The ``usage_events`` schema, written once: every other spelling of it derives from here.

:data:`EVENT_FIELDS` lists each column with its DuckDB type, whether it is required
(``NOT NULL``) and what it means. From it come :data:`EVENT_COLUMNS` (the column order
of inserts), the proxy writer's spooled types and required fields, the token columns
billing and governance sum, and :func:`create_table_sql` (the table a new store starts
with). The named migrations in :mod:`meterline.store` are history and stay append-only;
``tests/meterline/test_eventschema.py`` checks that applying them yields exactly this
table, and that the README's event schema table agrees with it.

Adding a column: append a :class:`EventField` here, append a named migration that adds
it (``ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS ...``), set it in
``addons/metering/events.py`` and add a row to the README's table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EventField:
    name: str
    type: str
    """DuckDB type: ``VARCHAR``, ``TIMESTAMP``, ``BIGINT``, ``BOOLEAN``, ``INTEGER``, ``DOUBLE``."""
    required: bool
    """``NOT NULL`` in the table; a spooled line without it is not an event."""
    meaning: str
    default: str | None = None
    """SQL literal for a column added after events were stored: rows stored before it
    read as this, and a spooled line without it (written by an older proxy) is stored
    with it. DuckLake cannot make such a column ``NOT NULL``, so it is nullable and the
    writer never stores a NULL in it."""


EVENT_FIELDS: tuple[EventField, ...] = (
    EventField("event_id", "VARCHAR", True, "'ml:<process token>-<n>': one per call"),
    EventField("ts", "TIMESTAMP", True, "UTC, when the response completed"),
    EventField("ingested_at", "TIMESTAMP", True, "UTC, when the batch reached the store"),
    EventField("consumer", "VARCHAR", False, "NULL: key not in the catalog"),
    EventField("key_fingerprint", "VARCHAR", False, "sha256:<hex> of the key; never the key"),
    EventField("provider", "VARCHAR", True, "built-in or catalog provider"),
    EventField("flavor", "VARCHAR", True, "openai | anthropic | gemini"),
    EventField("model", "VARCHAR", False, "as the provider reported it"),
    EventField("input_tokens", "BIGINT", True, "uncached input but audio"),
    EventField("cached_input_tokens", "BIGINT", True, "input read from the provider's cache"),
    EventField(
        "cache_write_tokens", "BIGINT", True, "input written to the provider's cache (5 minutes)"
    ),
    EventField("output_tokens", "BIGINT", True, "output but audio, reasoning included"),
    EventField("reasoning_tokens", "BIGINT", True, "share of output_tokens, not added to it"),
    EventField("estimated", "BOOLEAN", True, "tokens counted by tiktoken, not reported"),
    EventField("response_id", "VARCHAR", False, "provider's id: chatcmpl-..., msg_..."),
    EventField("request_id", "VARCHAR", False, "provider's request id header"),
    EventField("method", "VARCHAR", True, "request method"),
    EventField("host", "VARCHAR", True, "request host"),
    EventField("path", "VARCHAR", True, "request path, without its query string"),
    EventField("status", "INTEGER", False, "HTTP status; NULL: no response (stream cut, error)"),
    EventField("streamed", "BOOLEAN", True, "streaming requested or the response was SSE"),
    EventField("latency_ms", "DOUBLE", False, "request sent -> response complete"),
    EventField("ttft_ms", "DOUBLE", False, "request sent -> first body byte"),
    EventField("proxy_id", "VARCHAR", False, "which proxy recorded it"),
    EventField(
        "reason",
        "VARCHAR",
        False,
        "why the proxy refused the call itself (limit:<feature>, credits, not_granted, "
        "unavailable, body_too_large); NULL for forwarded calls",
    ),
    EventField(
        "cache_write_1h_tokens",
        "BIGINT",
        False,
        "input written to the provider's cache for an hour (Anthropic ttl 1h), priced "
        "apart from cache_write_tokens (5 minutes)",
        default="0",
    ),
    EventField(
        "audio_input_tokens",
        "BIGINT",
        False,
        "prompt audio not read from the cache (OpenAI, Gemini), priced at the audio rate; "
        "not inside input_tokens",
        default="0",
    ),
    EventField(
        "audio_output_tokens",
        "BIGINT",
        False,
        "output audio (OpenAI, Gemini), priced at the audio rate; not inside output_tokens",
        default="0",
    ),
    EventField(
        "web_search_calls",
        "BIGINT",
        False,
        "server-side web searches the provider bills per call (Anthropic, OpenAI and xAI "
        "Responses); a count of calls, not tokens",
        default="0",
    ),
    EventField(
        "cached_audio_input_tokens",
        "BIGINT",
        False,
        "prompt audio read from the provider's cache (OpenAI Realtime, Gemini), priced at "
        "the cached-audio rate; not inside cached_input_tokens nor audio_input_tokens",
        default="0",
    ),
    EventField(
        "service_tier",
        "VARCHAR",
        False,
        "the service tier the provider says served the call (OpenAI default, flex, "
        "priority, scale; Anthropic standard, priority, batch); NULL when not reported",
    ),
    EventField(
        "speed",
        "VARCHAR",
        False,
        "the speed the provider says the call ran at (Anthropic usage.speed: fast, "
        "standard; fast mode is billed at a multiple of every rate); NULL when not reported",
    ),
    EventField(
        "inference_geo",
        "VARCHAR",
        False,
        "where the provider says the call ran (Anthropic usage.inference_geo: us, global, "
        "not_available; US-only is billed at 1.1x); NULL when not reported",
    ),
)

EVENT_COLUMNS: tuple[str, ...] = tuple(f.name for f in EVENT_FIELDS)

STORE_ONLY: frozenset[str] = frozenset({"ingested_at"})
"""Columns the store sets when a batch arrives; the proxy never spools them."""

SPOOL_TYPES: dict[str, str] = {f.name: f.type for f in EVENT_FIELDS if f.name not in STORE_ONLY}
"""DuckDB type of each field the proxy spools (every event column but ``ingested_at``)."""

SPOOL_DEFAULTS: dict[str, str] = {f.name: f.default for f in EVENT_FIELDS if f.default is not None}
"""Columns a spooled line may lack (an older proxy wrote it) -> the SQL value stored then."""

REQUIRED_SPOOLED: tuple[str, ...] = tuple(
    f.name for f in EVENT_FIELDS if f.required and f.name not in STORE_ONLY
)

TOKEN_COLUMNS: dict[str, str] = {
    "input": "input_tokens",
    "cached_input": "cached_input_tokens",
    "cache_write": "cache_write_tokens",
    "cache_write_1h": "cache_write_1h_tokens",
    "audio_input": "audio_input_tokens",
    "cached_audio_input": "cached_audio_input_tokens",
    "output": "output_tokens",
    "audio_output": "audio_output_tokens",
    "web_search": "web_search_calls",
}
"""Catalog token type -> the event column counting it (the disjoint, billed counts).
``web_search`` counts calls, not tokens: it is metered and priced like the others but
never added into a token total (:data:`meterline.catalog.CALL_TYPES`)."""


def create_table_sql(table: str = "usage_events") -> str:
    """``CREATE TABLE IF NOT EXISTS`` for the whole schema (no migration history needed)."""
    cols = ",\n    ".join(
        f"{f.name} {f.type}"
        + (f" DEFAULT {f.default}" if f.default is not None else "")
        + (" NOT NULL" if f.required else "")
        for f in EVENT_FIELDS
    )
    return f"CREATE TABLE IF NOT EXISTS {table} (\n    {cols}\n)"


assert set(TOKEN_COLUMNS.values()) <= set(EVENT_COLUMNS)
