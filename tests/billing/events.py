"""Test helpers for billing: real DuckDB stores with usage events, and catalogs on disk.

Events are inserted as rows into ``usage_events`` of a real DuckDB file (the same table
the proxy writes), so billing reads exactly what it reads in production.
"""

from __future__ import annotations

import itertools
import textwrap
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from billing.store import billing_store
from meterline.catalog import Catalog, load_catalog
from meterline.store import EVENT_COLUMNS

_ids = itertools.count(1)


def utc(text: str) -> datetime:
    """``"2026-01-05"`` or ``"2026-01-05T10:00:00"`` -> aware UTC datetime."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass
class Event:
    """One usage_events row; ``ts`` and ``ingested_at`` aware UTC (ingested 1 s after ts)."""

    ts: datetime
    consumer: str | None = "agent-a"
    provider: str = "openai"
    model: str | None = "gpt-4o"
    input: int = 0
    cached_input: int = 0
    cache_write: int = 0
    output: int = 0
    cache_write_1h: int = 0
    audio_input: int = 0
    audio_output: int = 0
    web_search: int = 0
    cached_audio_input: int = 0
    service_tier: str | None = None
    speed: str | None = None
    inference_geo: str | None = None
    ingested_at: datetime | None = None
    event_id: str = field(default_factory=lambda: f"ev-{next(_ids):06d}")
    key_fingerprint: str | None = "sha256:" + "ab" * 32

    def row(self) -> tuple[object, ...]:
        ingested = self.ingested_at or self.ts + timedelta(seconds=1)
        return (
            self.event_id,
            self.ts.astimezone(UTC).replace(tzinfo=None),
            ingested.astimezone(UTC).replace(tzinfo=None),
            self.consumer,
            self.key_fingerprint,
            self.provider,
            "anthropic" if self.provider == "anthropic" else "openai",
            self.model,
            self.input,
            self.cached_input,
            self.cache_write,
            self.output,
            0,
            False,
            f"resp-{self.event_id}",
            f"req-{self.event_id}",
            "POST",
            "api.example",
            "/v1/chat/completions",
            200,
            False,
            12.5,
            3.5,
            "test",
            self.cache_write_1h,
            self.audio_input,
            self.audio_output,
            self.web_search,
            self.cached_audio_input,
            self.service_tier,
            self.speed,
            self.inference_geo,
        )


def add_events(db: Path | str, *events: Event) -> None:
    """Append rows to the store's usage_events (creating and migrating the file if new)."""
    columns = (*EVENT_COLUMNS[:24], *EVENT_COLUMNS[25:])  # reason: NULL (not refused)
    with billing_store(db, create=True) as con:
        con.executemany(
            f"INSERT INTO usage_events ({', '.join(columns)}) "
            f"VALUES ({', '.join(['?'] * len(columns))})",
            [e.row() for e in events],
        )


def sql(db: Path | str, query: str, params: list[object] | None = None) -> list[tuple]:
    with billing_store(db) as con:
        return con.execute(query, params or []).fetchall()


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


# Prices per 1,000 tokens so expected amounts are easy to compute by hand.
CATALOG = """
version: 1
consumers:
  - name: agent-a
  - name: agent-b
  - name: agent-c
  - name: stray
features:
  - key: gpt-in
    name: GPT input
    meter: {provider: openai, model: "gpt-4o*", token_types: [input, cached_input]}
  - key: gpt-out
    name: GPT output
    meter: {provider: openai, model: "GPT-4O*", token_types: [output]}
  - key: claude-all
    name: Claude tokens
    meter:
      provider: anthropic
      model: "claude-*"
      token_types: [input, cached_input, cache_write, output]
plans:
  - key: basic
    name: Basic
    currency: USD
    billing_cadence: P1M
    rate_cards:
      - key: fee
        name: Platform fee
        price: {type: flat, amount: "30.00", payment_term: in_advance}
      - key: gpt-in
        name: GPT input
        feature: gpt-in
        price: {type: unit, amount: "2.00", per: 1000}
      - key: gpt-out
        name: GPT output
        feature: gpt-out
        price:
          type: tiered
          mode: graduated
          per: 1000
          tiers:
            - {up_to: 10000, unit_amount: "10.00"}
            - {unit_amount: "5.00"}
  - key: plus
    name: Plus
    currency: USD
    billing_cadence: P1M
    rate_cards:
      - key: support
        name: Support
        price: {type: flat, amount: "31.00", payment_term: in_arrears}
      - key: claude-all
        name: Claude tokens
        feature: claude-all
        included: 1000
        price: {type: unit, amount: "4.00", per: 1000}
customers:
  - key: alpha
    name: Alpha Ltd
    currency: USD
    consumers: [agent-a]
    subscriptions:
      - {plan: basic, start: "2026-01-01T00:00:00Z"}
  - key: beta
    name: Beta GmbH
    currency: USD
    consumers: [agent-b]
    subscriptions:
      - {plan: basic, start: "2026-01-10T00:00:00Z", end: "2026-02-15T00:00:00Z"}
      - {plan: plus, start: "2026-02-15T00:00:00Z"}
  - key: gamma
    name: Gamma Inc
    currency: USD
    consumers: [agent-c]
    subscriptions:
      - {plan: plus, start: "2026-01-31T00:00:00Z", end: "2026-06-01T00:00:00Z"}
"""


def write_catalog(tmp_path: Path, text: str = CATALOG, name: str = "catalog.yaml") -> Path:
    return write(tmp_path / name, text)


@dataclass(frozen=True)
class Setup:
    db: Path
    catalog_path: Path

    @property
    def catalog(self) -> Catalog:
        return load_catalog(self.catalog_path)


def setup(tmp_path: Path, catalog: str = CATALOG) -> Setup:
    """A catalog file and an empty, migrated store in ``tmp_path``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    db = tmp_path / "meterline.duckdb"
    with billing_store(db, create=True):
        pass
    return Setup(db, write_catalog(tmp_path, catalog))
