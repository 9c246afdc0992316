"""``billing catalog check``: OK summary, and each problem as file: path: problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.billing.cli.runner import run
from tests.billing.events import Setup, setup, write


def check(tmp_path: Path, text: str) -> tuple[int, str, Path]:
    s = setup(tmp_path)
    path = write(tmp_path / "bad.yaml", text)
    result = run(Setup(s.db, path), "catalog", "check")
    assert result.stdout == ""
    return result.exit_code, result.stderr, path


def test_check_ok(tmp_path: Path) -> None:
    s = setup(tmp_path)
    result = run(s, "catalog", "check")
    assert result.exit_code == 0
    assert result.stdout == (
        f"{s.catalog_path}: OK (0 providers, 4 consumers, 3 features, 2 plans, 3 customers)\n"
    )


def test_the_shipped_sample_catalog_is_valid() -> None:
    sample = Path(__file__).parents[3] / "catalog.yaml"
    result = run(None, "--catalog", str(sample), "catalog", "check")
    assert (result.exit_code, result.stderr) == (0, "")


MALFORMED = [
    (
        "unknown field, missing field",
        """
        version: 1
        plans:
          - key: basic
            name: Basic
            currency: USD
            rate_cards:
              - key: fee
                name: Fee
                pricee: {type: flat, amount: "1.00"}
        """,
        [
            "{path}: plans[0].rate_cards[0].price: Field required",
            "{path}: plans[0].rate_cards[0].pricee: unknown field",
        ],
    ),
    (
        "tiers out of order",
        """
        version: 1
        plans:
          - key: p
            name: P
            currency: USD
            rate_cards:
              - key: t
                name: T
                feature: f
                price: {type: tiered, mode: graduated, tiers: [{up_to: 10}, {up_to: 5}, {}]}
        """,
        ["{path}: plans[0].rate_cards[0].price.tiers: tier bounds (up_to) must strictly increase"],
    ),
    (
        "dangling references",
        """
        version: 1
        consumers: [{name: a}]
        plans: [{key: p, name: P, currency: USD}]
        customers:
          - key: c
            name: C
            currency: EUR
            consumers: [a, ghost]
            subscriptions: [{plan: gold, start: "2026-01-01T00:00:00Z"}]
        """,
        [
            "{path}: customers[0].consumers[1]: unknown consumer 'ghost'",
            "{path}: customers[0].subscriptions[0].plan: unknown plan 'gold'",
        ],
    ),
    (
        "bad values",
        """
        version: 1
        plans:
          - key: p
            name: P
            currency: usd
            billing_cadence: monthly
            rate_cards:
              - {key: fee, name: Fee, price: {type: flat, amount: "-1"}}
        """,
        [
            "{path}: plans[0].currency: String should match pattern '^[A-Z]{{3}}$'",
            "{path}: plans[0].billing_cadence: "
            "'monthly' is not an ISO-8601 duration such as P1M, P1W or P1Y",
            "{path}: plans[0].rate_cards[0].price.amount: "
            "Input should be greater than or equal to 0",
        ],
    ),
    (
        "invalid YAML",
        "version: 1\nplans: [\n  - key: x\n",
        ["{path}: line 3, column 3: invalid YAML: expected the node content, but found '-'"],
    ),
    ("not a mapping", "- a\n- b\n", ["{path}: (top level): expected a mapping, got list"]),
]


@pytest.mark.parametrize(
    ("text", "lines"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_catalogs_exit_1_with_every_problem(
    tmp_path: Path, text: str, lines: list[str]
) -> None:
    code, stderr, path = check(tmp_path, text)
    expected = [line.format(path=path) for line in lines]
    assert code == 1
    assert stderr == "Error: " + "\n".join(expected) + "\n"


def test_missing_catalog_file(tmp_path: Path) -> None:
    s = setup(tmp_path)
    result = run(Setup(s.db, tmp_path / "nope.yaml"), "catalog", "check")
    assert (result.exit_code, result.stderr) == (
        1,
        f"Error: {tmp_path / 'nope.yaml'}: file not found\n",
    )
