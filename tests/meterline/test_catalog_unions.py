"""A field that takes one of several types (a union) gets one error line naming the field
and what it takes, not one line per member under pydantic's internal names
(``limit.constrained-int: ...`` and ``limit.literal['unlimited']: ...``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meterline.catalog import Catalog, CatalogError, parse_catalog

CATALOG = """
features: [{key: tok, name: Tokens, meter: {provider: openai}}]
consumers: [{name: a}]
plans:
  - key: p
    name: P
    currency: USD
    entitlements: [{feature: tok, limit: PLAN_LIMIT}]
customers:
  - key: c
    name: C
    currency: USD
    consumers: [a]
    subscriptions: [{plan: p, start: "2026-01-01T00:00:00Z"}]
    entitlements: [{feature: tok, limit: OVERRIDE_LIMIT}]
"""

ACCEPTS = 'Input should be an integer >= 0 or "unlimited"'


def _catalog(plan_limit: str = "100", override_limit: str = "unlimited") -> str:
    return CATALOG.replace("PLAN_LIMIT", plan_limit).replace("OVERRIDE_LIMIT", override_limit)


def test_good_limits_are_taken() -> None:
    catalog = parse_catalog(_catalog(), "cat.yaml")
    assert catalog.plans[0].entitlements[0].limit == 100
    assert catalog.customers[0].entitlements[0].limit == "unlimited"


@pytest.mark.parametrize("bad", ["lots", "-3", "1.5", "[1]", "Unlimited"])
def test_a_wrong_limit_is_one_line_saying_what_it_takes(bad: str) -> None:
    with pytest.raises(CatalogError) as err:
        parse_catalog(_catalog(plan_limit=bad, override_limit=bad), "cat.yaml")
    assert str(err.value).splitlines() == [
        f"cat.yaml: plans[0].entitlements[0].limit: {ACCEPTS}",
        f"cat.yaml: customers[0].entitlements[0].limit: {ACCEPTS}",
    ]


def test_a_missing_override_limit_says_what_it_takes() -> None:
    with pytest.raises(CatalogError) as err:
        parse_catalog(_catalog(override_limit="null"), "cat.yaml")
    assert str(err.value) == f"cat.yaml: customers[0].entitlements[0].limit: {ACCEPTS}"


def _unions(schema: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(schema, dict):
        if schema.get("type") == "union":
            yield path, schema
        for key, value in schema.items():
            yield from _unions(value, f"{path}/{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            yield from _unions(value, f"{path}[{i}]")


def test_every_union_in_the_catalog_says_what_it_takes() -> None:
    """A new ``int | Literal[...]`` field without ``Accepts`` would print a line per member
    again. (Tagged unions, such as ``price`` by its ``type``, report one error already.)"""
    unions = list(_unions(Catalog.__pydantic_core_schema__))
    assert len(unions) >= 2  # the two limits: the walk does see them
    bare = [path for path, schema in unions if "custom_error_message" not in schema]
    assert bare == []


def test_the_documented_line_is_the_real_one() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "catalog.md").read_text()
    assert f"`plans[0].entitlements[0].limit: {ACCEPTS}`" in " ".join(doc.split())
