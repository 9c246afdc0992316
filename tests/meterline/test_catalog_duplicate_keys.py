"""A key written twice in catalog.yaml is an error naming both lines, not "the last one wins"
(a price's second ``amount`` billed, a second ``features:`` replacing the first)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from meterline.catalog import Catalog, CatalogError, load_catalog, parse_catalog
from meterline.catalog.uniquekeys import (
    FastUniqueKeyLoader,
    UniqueKeySafeLoader,
    load_unique_keys,
)

CATALOG = """\
version: 1
consumers: [{name: acme}]
features:
  - {key: tok, name: Tokens, meter: {provider: openai}}
plans:
  - key: starter
    name: Starter
    currency: USD
    rate_cards:
      - key: tok
        name: Tokens
        feature: tok
        price:
          type: unit
          amount: "1"
customers:
  - key: acme
    name: Acme
    currency: USD
    consumers: [acme]
    subscriptions:
      - plan: starter
        start: "2026-12-03T09:22:06Z"
"""


def _after(anchor: str, added: str) -> str:
    assert anchor in CATALOG
    return CATALOG.replace(anchor, anchor + added, 1)


def test_the_base_catalog_is_valid() -> None:
    parse_catalog(CATALOG, "cat.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            _after('amount: "1"\n', '          amount: "0.001"\n'),
            "cat.yaml: line 16: duplicate key 'amount' (first at line 15)",
        ),
        (
            _after('start: "2026-12-03T09:22:06Z"\n', '        start: "2026-12-03T09:22:09Z"\n'),
            "cat.yaml: line 24: duplicate key 'start' (first at line 23)",
        ),
        (
            CATALOG + "features:\n  - {key: other, name: Other, meter: {}}\n",
            "cat.yaml: line 24: duplicate key 'features' (first at line 3)",
        ),
        (
            CATALOG.replace("[{name: acme}]", "[{name: acme, name: acme2}]"),
            "cat.yaml: line 2: duplicate key 'name' (first at line 2)",
        ),
        (  # quoted or not, one key
            _after('amount: "1"\n', '          "amount": "1"\n'),
            "cat.yaml: line 16: duplicate key 'amount' (first at line 15)",
        ),
    ],
)
def test_a_repeated_key_is_one_line_naming_both(text: str, message: str) -> None:
    with pytest.raises(CatalogError) as err:
        parse_catalog(text, "cat.yaml")
    assert str(err.value) == message


def test_every_repeated_key_is_listed_in_file_order() -> None:
    """All at once, in file order (PyYAML builds nested mappings level by level, so the
    top-level repetition at the end is met before the deep one)."""
    text = _after('amount: "1"\n', '          amount: "0.001"\n') + "version: 2\n"
    with pytest.raises(CatalogError) as err:
        parse_catalog(text, "cat.yaml")
    assert str(err.value).splitlines() == [
        "cat.yaml: line 16: duplicate key 'amount' (first at line 15)",
        "cat.yaml: line 25: duplicate key 'version' (first at line 1)",
    ]


def test_libyaml_and_the_pure_loader_find_the_same_repetitions() -> None:
    text = _after('amount: "1"\n', '          amount: "0.001"\n') + "version: 2\n"
    found = []
    for loader in (FastUniqueKeyLoader, UniqueKeySafeLoader):
        with pytest.raises(yaml.YAMLError) as err:
            load_unique_keys(text, loader)
        found.append(str(err.value))
    assert FastUniqueKeyLoader is not UniqueKeySafeLoader  # libyaml is there and used
    expected = (
        "line 16: duplicate key 'amount' (first at line 15)\n"
        "line 25: duplicate key 'version' (first at line 1)"
    )
    assert found == [expected, expected]


def test_a_duplicate_after_a_syntax_error_libyaml_refuses_is_still_reported() -> None:
    """Syntax errors are read again with the pure-Python loader: it checks keys too."""
    with pytest.raises(CatalogError, match=r"^cat\.yaml: line 2, column 1: invalid YAML: "):
        parse_catalog("plans: [\n", "cat.yaml")


def test_merge_keys_are_not_duplicates() -> None:
    """``<<: *anchor`` then a key the anchor has: the explicit key overrides, as YAML says."""
    text = CATALOG.replace(
        "        price:\n          type: unit\n",
        '        price:\n          <<: {type: unit, amount: "9"}\n',
    )
    catalog = parse_catalog(text, "cat.yaml")
    price = catalog.plans[0].rate_cards[0].price
    assert str(price.amount) == "1"  # type: ignore[union-attr]

    two_merges = CATALOG.replace(
        '        price:\n          type: unit\n          amount: "1"\n',
        '        price:\n          <<: [{type: unit, amount: "1"}, {amount: "2"}]\n',
    )
    # two merged mappings sharing a key: not a repetition either; read as PyYAML always has
    assert parse_catalog(two_merges, "cat.yaml") == Catalog.model_validate(
        yaml.safe_load(two_merges)
    )


def test_a_merged_anchor_is_checked_once_as_written() -> None:
    """A node merged elsewhere is rewritten in place by PyYAML (merged pairs added); checked
    afterwards it would seem to repeat keys it does not."""
    text = (
        "base: &base {k: 0}\n"
        "deeper:\n"
        "  inner: &inner\n"
        "    <<: *base\n"
        "    k: 1\n"
        "other:\n"
        "  <<: *inner\n"
        "  k: 2\n"
    )
    for loader in (FastUniqueKeyLoader, UniqueKeySafeLoader):
        assert load_unique_keys(text, loader) == {
            "base": {"k": 0},
            "deeper": {"inner": {"k": 1}},
            "other": {"k": 2},
        }


def test_keys_of_different_types_are_different_keys() -> None:
    assert load_unique_keys("1: a\n'1': b\n", FastUniqueKeyLoader) == {1: "a", "1": "b"}


def test_a_file_on_disk_and_the_proxys_view_refuse_it_too(tmp_path: Path) -> None:
    from meterline.proxycatalog import load_proxy_catalog

    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG + "consumers: [{name: other}]\n")
    expected = f"{path}: line 24: duplicate key 'consumers' (first at line 2)"
    for load in (load_catalog, load_proxy_catalog):
        with pytest.raises(CatalogError) as err:
            load(path)
        assert str(err.value) == expected


def test_the_documented_message_is_the_real_one() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "catalog.md").read_text()
    text = _after('amount: "1"\n', '          amount: "0.001"\n')
    with pytest.raises(CatalogError) as err:
        parse_catalog(text, "catalog.yaml")
    documented = "catalog.yaml: line 24: duplicate key 'amount' (first at line 22)"
    assert documented in doc
    assert str(err.value) == documented.replace("24", "16").replace("22", "15")
