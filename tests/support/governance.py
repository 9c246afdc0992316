"""Catalogs with plans, entitlements and customers for governance tests (fake providers)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from meterline.fingerprint import fingerprint
from tests.support.upstream import FakeProvider

FEATURES = [
    {
        "key": "gpt-out",
        "name": "GPT-4o output tokens",
        "meter": {"provider": "fake-openai", "model": "gpt-4o*", "token_types": ["output"]},
    },
    {
        "key": "claude-out",
        "name": "Claude output tokens",
        "meter": {"provider": "fake-anthropic", "model": "claude-*", "token_types": ["output"]},
    },
    {
        "key": "gpt-in",
        "name": "GPT-4o input tokens",
        "meter": {"provider": "fake-openai", "model": "gpt-4o*", "token_types": ["input"]},
    },
    {
        "key": "o3",
        "name": "o3 tokens",
        "meter": {"provider": "fake-openai", "model": "o3*"},
    },
]


def governed_catalog(
    path: Path,
    upstream: FakeProvider,
    keys: dict[str, str],
    *,
    entitlements: list[dict[str, Any]],
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC),
    cadence: str = "P1M",
    prepaid: bool = False,
    rate_cards: list[dict[str, Any]] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    alerts: dict[str, Any] | None = None,
) -> Path:
    """One plan ``capped`` with ``entitlements``; customer ``acme`` holds every consumer."""
    doc: dict[str, Any] = {
        "version": 1,
        "providers": upstream.catalog_providers(),
        "consumers": [
            {"name": name, "keys": [{"fingerprint": fingerprint(key)}]}
            for name, key in keys.items()
        ],
        "features": FEATURES,
        "plans": [
            {
                "key": "capped",
                "name": "Capped",
                "currency": "USD",
                "billing_cadence": cadence,
                "prepaid": prepaid,
                "rate_cards": rate_cards or [],
                "entitlements": entitlements,
            }
        ],
        "customers": [
            {
                "key": "acme",
                "name": "ACME",
                "currency": "USD",
                "consumers": list(keys),
                "subscriptions": [
                    {"plan": "capped", "start": start.isoformat().replace("+00:00", "Z")}
                ],
                "entitlements": overrides or [],
            }
        ],
    }
    if alerts:
        doc["alerts"] = alerts
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def with_plan(
    catalog: Path, features: list[dict[str, Any]], entitlements: list[dict[str, Any]]
) -> Path:
    """``catalog`` (one provider, consumer ``alice``) given ``features`` and one plan
    ``capped`` with ``entitlements``, to which customer ``acme`` (holding ``alice``) has
    been subscribed since 1 January 2026."""
    doc = yaml.safe_load(catalog.read_text())
    doc["features"] = features
    doc["plans"] = [
        {"key": "capped", "name": "Capped", "currency": "USD", "entitlements": entitlements}
    ]
    subscription = {"plan": "capped", "start": "2026-01-01T00:00:00Z"}
    doc["customers"] = [
        {"key": "acme", "name": "ACME", "currency": "USD", "consumers": ["alice"],
         "subscriptions": [subscription]}
    ]  # fmt: skip
    catalog.write_text(yaml.safe_dump(doc, sort_keys=False))
    return catalog
