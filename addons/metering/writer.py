"""Background writer: spool segments -> the DuckDB (or DuckLake) ``usage_events`` table.

Every ``interval`` seconds (or sooner when the spool holds ``batch_events`` events) the
writer seals the open segment, reads all sealed ones, and in one transaction inserts
them as one Arrow table, skipping event ids the store already has. Only after the
commit are the segments deleted, so a crash at any point either replays a segment
(the dedup drops what was already committed) or loses nothing.

The store is opened for each batch and closed right after (:func:`meterline.store.store`
waits out a reader's lock), so ``billing`` can read the file between flushes.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.json as pa_json

from addons.metering.spool import Spool
from meterline.store import EVENT_COLUMNS, EVENT_MIGRATIONS, migrate, store

log = logging.getLogger(__name__)

ARROW_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("ts", pa.timestamp("us")),
        ("consumer", pa.string()),
        ("key_fingerprint", pa.string()),
        ("provider", pa.string()),
        ("flavor", pa.string()),
        ("model", pa.string()),
        ("input_tokens", pa.int64()),
        ("cached_input_tokens", pa.int64()),
        ("cache_write_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("reasoning_tokens", pa.int64()),
        ("estimated", pa.bool_()),
        ("response_id", pa.string()),
        ("request_id", pa.string()),
        ("method", pa.string()),
        ("host", pa.string()),
        ("path", pa.string()),
        ("status", pa.int32()),
        ("streamed", pa.bool_()),
        ("latency_ms", pa.float64()),
        ("ttft_ms", pa.float64()),
        ("proxy_id", pa.string()),
    ]
)
assert [f.name for f in ARROW_SCHEMA] == [c for c in EVENT_COLUMNS if c != "ingested_at"]

_COLS = ", ".join(EVENT_COLUMNS)
_SELECT = ", ".join("?::TIMESTAMP" if c == "ingested_at" else c for c in EVENT_COLUMNS)
INSERT_SQL = f"""
    INSERT INTO usage_events ({_COLS})
    SELECT {_SELECT}
    FROM (SELECT * FROM batch QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY ts) = 1)
    WHERE event_id NOT IN (SELECT event_id FROM usage_events)
"""


def to_arrow(events: list[dict[str, Any]]) -> pa.Table:
    rows = []
    for e in events:
        row = {name: e.get(name) for name in ARROW_SCHEMA.names}
        if isinstance(row["ts"], str):
            row["ts"] = datetime.fromisoformat(row["ts"])
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=ARROW_SCHEMA)


_PARSE = pa_json.ParseOptions(explicit_schema=ARROW_SCHEMA, unexpected_field_behavior="ignore")


def read_segment(path: Path) -> pa.Table:
    """A sealed spool segment as an Arrow table.

    Arrow's JSON reader parses in C++ without the GIL, so a big batch does not stall the
    proxy's event loop. A segment with a torn line (a crash mid-write) is read line by
    line instead, skipping what cannot be parsed.
    """
    try:
        return pa_json.read_json(path, parse_options=_PARSE)
    except pa.ArrowInvalid:
        return to_arrow(Spool.read(path))


def insert_events(con: duckdb.DuckDBPyConnection, events: list[dict[str, Any]] | pa.Table) -> int:
    """Insert ``events`` in one transaction, skipping ids already stored; returns rows added."""
    batch = events if isinstance(events, pa.Table) else to_arrow(events)
    ingested_at = datetime.now(UTC).replace(tzinfo=None)
    con.execute("BEGIN TRANSACTION")
    try:
        con.register("batch", batch)
        inserted = con.execute(INSERT_SQL, [ingested_at]).fetchone()
        con.unregister("batch")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return int(inserted[0]) if inserted else 0


class SpoolWriter:
    """Drains a :class:`Spool` into the store from a daemon thread."""

    def __init__(
        self,
        spool: Spool,
        locator: str,
        *,
        interval: float = 1.0,
        batch_events: int = 1000,
        lock_wait_s: float = 30.0,
    ) -> None:
        self.spool = spool
        self.locator = locator
        self.interval = interval
        self.batch_events = batch_events
        self.lock_wait_s = lock_wait_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flush_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.inserted = 0
        self.failures = 0

    def start(self) -> None:
        """Start the thread; its first flush replays segments a previous run left behind."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="meterline-writer", daemon=True)
        self._thread.start()

    def notify(self, pending: int) -> None:
        """Called after each append with the open segment's size: wake early when full."""
        if pending >= self.batch_events:
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            failed = not self.flush()
            # Back off after a failure (store locked for long, disk full) instead of spinning.
            self._wake.wait(self.interval * (5 if failed else 1))
            self._wake.clear()

    def flush(self) -> bool:
        """Seal, insert and delete every pending segment now. False if the store failed."""
        with self._flush_lock:
            self.spool.seal()
            segments = self.spool.sealed()
            if not segments:
                return True
            tables = [read_segment(path) for path in segments]
            events = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
            try:
                if events.num_rows:
                    with store(self.locator, wait_s=self.lock_wait_s) as con:
                        # One batch needs no parallelism; leave the cores to the proxy.
                        con.execute("SET threads = 1")
                        migrate(con, EVENT_MIGRATIONS)
                        self.inserted += insert_events(con, events)
            except Exception as e:  # keep the segments; the next flush retries them
                self.failures += 1
                log.warning(
                    "meterline: cannot write %d event(s) to %s (kept in spool %s): %s",
                    events.num_rows,
                    self.locator,
                    self.spool.directory,
                    e,
                )
                return False
            for path in segments:
                Spool.remove(path)
            return True

    def stop(self) -> bool:
        """Stop the thread and drain everything; False if events had to stay in the spool."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return self.flush()
