"""Catalog validation: one clear line per problem, naming file, path and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterline.catalog import Catalog, CatalogError, load_catalog, loading, parse_catalog
from meterline.catalog.uniquekeys import UniqueKeySafeLoader

REPO = Path(__file__).resolve().parents[2]
FP = "sha256:" + "ab" * 32

BASE = """
features:
  - key: f-in
    name: In
    meter: {provider: openai, model: "gpt-4o*", token_types: [input]}
plans:
  - key: p
    name: P
    currency: USD
    rate_cards:
      - key: fee
        name: Fee
        price: {type: flat, amount: "10"}
      - key: in
        name: In
        feature: f-in
        price: {type: unit, amount: "2.50", per: 1000000}
"""


def test_shipped_catalog_is_valid() -> None:
    catalog = load_catalog(REPO / "catalog.yaml")
    assert {c.key for c in catalog.customers} >= {"acme"}
    assert "acme-corp" in {c.name for c in catalog.consumers}


def test_decimal_prices_are_exact() -> None:
    catalog = parse_catalog(BASE)
    price = catalog.plans[0].rate_cards[1].price
    assert str(price.amount) == "2.50"  # type: ignore[union-attr]


@pytest.mark.parametrize("loader", ["libyaml", "pure"])
def test_unquoted_prices_are_the_decimal_written_never_a_float(
    loader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``amount: 99999.123456789012`` unquoted was a YAML float, billed as 99999.123456789
    and passed the checks: it is read as written (12 decimals: allowed), 13 decimals are
    refused like a quoted string's, and short ones (``2.5``, ``1_000.25``) keep working."""
    if loader == "pure":  # the loader every catalog goes through when libyaml is missing
        monkeypatch.setattr(loading, "FastUniqueKeyLoader", UniqueKeySafeLoader)
    unquoted = 'amount: "2.50"'
    for written, exact in [
        ("99999.123456789012", "99999.123456789012"),
        ("2.5", "2.5"),
        ("1_000.25", "1000.25"),
        ("0.000000000001", "1E-12"),
        ("25", "25"),
    ]:
        catalog = parse_catalog(BASE.replace(unquoted, f"amount: {written}"))
        assert str(catalog.plans[0].rate_cards[1].price.amount) == exact  # type: ignore[union-attr]
    with pytest.raises(CatalogError) as err:
        parse_catalog(BASE.replace(unquoted, "amount: 99999.1234567890123"), "cat.yaml")
    assert str(err.value) == (
        "cat.yaml: plans[0].rate_cards[1].price.amount: Decimal input should have no more "
        "than 12 decimal places"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            BASE.replace('amount: "2.50"', 'amount: "-1"'),
            "cat.yaml: plans[0].rate_cards[1].price.amount: Input should be greater than or "
            "equal to 0",
        ),
        (
            BASE.replace('price: {type: unit, amount: "2.50", per: 1000000}', "price: {type: x}"),
            "cat.yaml: plans[0].rate_cards[1].price: Input tag 'x' found using 'type' does not "
            "match any of the expected tags: 'flat', 'unit', 'tiered', 'package'",
        ),
        (
            BASE.replace("feature: f-in", "feature: nope"),
            "cat.yaml: plans[0].rate_cards[1].feature: unknown feature 'nope'",
        ),
        (
            BASE.replace("currency: USD", "currency: usd"),
            "cat.yaml: plans[0].currency: 'usd' is not an ISO 4217 currency code; "
            "did you mean 'USD'?",
        ),
        (
            BASE.replace("    name: P\n", "    name: P\n    colour: red\n"),
            "cat.yaml: plans[0].colour: unknown field",
        ),
        (
            BASE.replace(
                "        price: {type: flat", "        feature: f-in\n        price: {type: flat"
            ),
            "cat.yaml: plans[0].rate_cards[0]: a flat fee has no feature",
        ),
        (
            "providers:\n  - {name: x, flavor: anthropic, hosts: [a.example], auth: api-key}\n",
            "cat.yaml: providers[0]: auth: only for flavor openai (the anthropic API says where "
            "its key goes)",
        ),
        ("plans: [\n", "cat.yaml: line 2, column 1: invalid YAML: expected the node content"),
        ("- a\n- b\n", "cat.yaml: (top level): expected a mapping, got list"),
    ],
)
def test_errors_name_file_path_and_problem(text: str, message: str) -> None:
    with pytest.raises(CatalogError) as err:
        parse_catalog(text, "cat.yaml")
    assert str(err.value).startswith(message)


def test_tier_errors_point_at_the_tier_list() -> None:
    text = BASE.replace(
        'price: {type: unit, amount: "2.50", per: 1000000}',
        "price: {type: tiered, mode: graduated, tiers: "
        '[{up_to: 10, unit_amount: "1"}, {up_to: 5, unit_amount: "1"}, {unit_amount: "1"}]}',
    )
    with pytest.raises(CatalogError) as err:
        parse_catalog(text, "cat.yaml")
    assert str(err.value) == (
        "cat.yaml: plans[0].rate_cards[1].price.tiers: tier bounds (up_to) must strictly increase"
    )


def test_bad_tier_field_names_the_tier() -> None:
    text = BASE.replace(
        'price: {type: unit, amount: "2.50", per: 1000000}',
        "price: {type: tiered, mode: volume, tiers: "
        '[{up_to: 10, unit_amount: "1"}, {up_to: 20, unit_amount: "1"}, {unit_amount: "-3"}]}',
    )
    with pytest.raises(CatalogError) as err:
        parse_catalog(text, "cat.yaml")
    assert str(err.value) == (
        "cat.yaml: plans[0].rate_cards[1].price.tiers[2].unit_amount: "
        "Input should be greater than or equal to 0"
    )


def test_several_problems_each_on_its_own_line() -> None:
    text = f"""
consumers:
  - name: a
    keys: [{{fingerprint: "{FP}"}}]
  - name: b
    keys: [{{fingerprint: "{FP}"}}]
customers:
  - key: c
    name: C
    currency: EUR
    consumers: [a, ghost]
    subscriptions: [{{plan: missing, start: "2026-01-01T00:00:00Z"}}]
"""
    with pytest.raises(CatalogError) as err:
        parse_catalog(text, "cat.yaml")
    assert str(err.value).splitlines() == [
        "cat.yaml: consumers[1].keys[0].fingerprint: key belongs to 'a'",
        "cat.yaml: customers[0].consumers[1]: unknown consumer 'ghost'",
        "cat.yaml: customers[0].subscriptions[0].plan: unknown plan 'missing'",
    ]


def test_subscription_needs_timezone_and_no_overlap() -> None:
    def customer(subs: str) -> str:
        return (
            BASE
            + f"""
customers:
  - key: c
    name: C
    currency: USD
    subscriptions: {subs}
"""
        )

    with pytest.raises(CatalogError) as err:
        parse_catalog(customer('[{plan: p, start: "2026-01-01T00:00:00"}]'), "cat.yaml")
    assert "customers[0].subscriptions[0].start: time 2026" in str(err.value)
    with pytest.raises(CatalogError) as err:
        parse_catalog(
            customer(
                '[{plan: p, start: "2026-01-01T00:00:00Z"},'
                ' {plan: p, start: "2026-02-01T00:00:00Z"}]'
            ),
            "cat.yaml",
        )
    assert "customers[0].subscriptions: subscriptions overlap" in str(err.value)
    # a plan change: one ends where the next starts
    ok = parse_catalog(
        customer(
            '[{plan: p, start: "2026-01-01T00:00:00Z", end: "2026-02-01T00:00:00Z"},'
            ' {plan: p, start: "2026-02-01T00:00:00Z"}]'
        )
    )
    assert len(ok.customers[0].subscriptions) == 2


@pytest.mark.parametrize(
    ("entry", "line"),
    [
        (
            'subscriptions: [{plan: p, start: "0001-01-01T00:00:00Z"}]',
            "cat.yaml: customers[0].subscriptions[0].start: time 0001-01-01T00:00:00+00:00 "
            "is out of range (years 1970 to 9998, in UTC)",
        ),
        (
            'subscriptions: [{plan: p, start: "2026-01-01T00:00:00Z",'
            ' end: "9999-01-01T00:00:00Z"}]',
            "cat.yaml: customers[0].subscriptions[0].end: time 9999-01-01T00:00:00+00:00 "
            "is out of range (years 1970 to 9998, in UTC)",
        ),
        (
            'subscriptions: [{plan: p, start: "1970-01-01T00:30:00+01:00"}]',
            "cat.yaml: customers[0].subscriptions[0].start: time 1970-01-01T00:30:00+01:00 "
            "is out of range (years 1970 to 9998, in UTC)",
        ),
        (
            'subscriptions: [{plan: p, start: "0001-01-01T00:00:00+01:00"}]',
            "cat.yaml: customers[0].subscriptions[0].start: time 0001-01-01T00:00:00+01:00 "
            "is out of range (years 1970 to 9998, in UTC)",
        ),
        (
            'entitlements: [{feature: f-in, limit: 5, start: "0026-01-01T00:00:00Z"}]',
            "cat.yaml: customers[0].entitlements[0].start: time 0026-01-01T00:00:00+00:00 "
            "is out of range (years 1970 to 9998, in UTC)",
        ),
    ],
    ids=["start-year-1", "end-year-9999", "start-1969-in-utc", "start-overflows", "entitlement"],
)
def test_catalog_times_outside_1970_to_9998_are_refused(entry: str, line: str) -> None:
    """A start of ``0001-01-01`` (a typo for 2026) passed: ``invoice generate`` then
    listed 24,000 months never invoiced and finalized an invoice dated ``1-01-01``."""
    text = BASE + f"customers:\n  - {{key: c, name: C, currency: USD, {entry}}}\n"
    with pytest.raises(CatalogError) as err:
        parse_catalog(text, "cat.yaml")
    assert str(err.value) == line


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CatalogError) as err:
        load_catalog(tmp_path / "nope.yaml")
    assert str(err.value) == f"{tmp_path / 'nope.yaml'}: file not found"


def test_a_catalog_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    """Saved as Latin-1 (an editor's default): every billing command printed a traceback."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes("version: 1\nconsumers:\n  - name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(CatalogError) as err:
        load_catalog(path)
    assert str(err.value) == (
        f"{path}: not UTF-8 text (byte 0xe9 at offset 35): save the catalog as UTF-8"
    )


def test_libyaml_and_pure_loader_give_the_same_catalog() -> None:
    import yaml

    text = (REPO / "catalog.yaml").read_text()
    assert getattr(yaml, "CSafeLoader", None) is not None  # the fast path is really taken
    assert parse_catalog(text) == Catalog.model_validate(yaml.safe_load(text))


def test_a_catalog_nested_thousands_of_levels_deep_is_one_catalog_error() -> None:
    """It raised RecursionError: a traceback at start, and one per poll of a reload."""
    deep = "consumers: " + "[" * 50_000 + "]" * 50_000
    with pytest.raises(CatalogError, match=r"^cat\.yaml: nested too deeply to be a catalog$"):
        parse_catalog(deep, "cat.yaml")
