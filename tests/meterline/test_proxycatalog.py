"""The proxy validates only the catalog sections it uses; billing still validates all."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from meterline.catalog import CatalogError, load_catalog
from meterline.fingerprint import fingerprint
from meterline.proxycatalog import load_proxy_catalog

FP_A, FP_B = fingerprint("sk-alice"), fingerprint("sk-bob")


def _doc(**extra: object) -> dict[str, object]:
    return {
        "version": 1,
        "consumers": [
            {"name": "alice", "keys": [{"fingerprint": FP_A}]},
            {"name": "bob", "keys": [{"fingerprint": FP_B}]},
        ],
        "features": [{"key": "tokens", "name": "Tokens", "meter": {}}],
        "plans": [
            {
                "key": "pro",
                "name": "Pro",
                "currency": "USD",
                # a pricing typo: "unit_amont", and a tiered price without tiers
                "rate_cards": [
                    {"key": "t", "name": "T", "feature": "tokens",
                     "price": {"type": "unit", "unit_amont": "1"}},
                ],
                "entitlements": [{"feature": "tokens", "limit": 100}],
            }
        ],
        "customers": [
            {"key": "acme", "name": "Acme", "currency": "USD", "consumers": ["alice"],
             "invoicing": {"days_until_due": -1},
             "subscriptions": [{"plan": "pro", "start": "2026-01-01T00:00:00Z"}]},
        ],
        "seller": {"nme": "typo"},
        **extra,
    }  # fmt: skip


def _write(tmp_path: Path, doc: dict[str, object]) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_billing_typos_stop_billing_not_the_proxy(tmp_path: Path) -> None:
    path = _write(tmp_path, _doc())
    with pytest.raises(CatalogError) as e:
        load_catalog(path)
    assert "plans[0].rate_cards[0].price.unit_amont: unknown field" in str(e.value)
    assert "seller" in str(e.value) and "days_until_due" in str(e.value)
    catalog = load_proxy_catalog(path)
    assert set(catalog.consumer_by_fingerprint()) == {FP_A, FP_B}
    assert catalog.plan("pro").entitlements[0].limit == 100  # governance still has its limits


def test_what_the_proxy_uses_is_still_validated(tmp_path: Path) -> None:
    doc = _doc()
    doc["consumers"] = [{"name": "Not Valid"}]
    with pytest.raises(CatalogError, match=r"consumers\[0\]\.name"):
        load_proxy_catalog(_write(tmp_path, doc))
    with pytest.raises(CatalogError, match=r"consumer: unknown field"):
        load_proxy_catalog(_write(tmp_path, _doc(consumer=[])))  # a typo of a section name
    doc = _doc()
    doc["plans"][0]["entitlements"] = [{"feature": "nope", "limit": 1}]  # type: ignore[index]
    with pytest.raises(CatalogError, match=r"plans\[0\]\.entitlements\[0\]\.feature"):
        load_proxy_catalog(_write(tmp_path, doc))


def test_a_prepaid_plans_prices_are_the_proxys_too(tmp_path: Path) -> None:
    doc = _doc()
    doc["plans"][0]["prepaid"] = True  # type: ignore[index]
    with pytest.raises(CatalogError, match=r"plans\[0\]\.rate_cards\[0\]\.price"):
        load_proxy_catalog(_write(tmp_path, doc))
