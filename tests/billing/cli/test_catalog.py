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
            "{path}: plans[0].currency: 'usd' is not an ISO 4217 currency code; "
            "did you mean 'USD'?",
            "{path}: plans[0].billing_cadence: "
            "'monthly' is not an ISO-8601 duration such as P1M, P1W or P1Y",
            "{path}: plans[0].rate_cards[0].price.amount: "
            "Input should be greater than or equal to 0",
        ],
    ),
    (
        "currencies that are not ISO 4217 or have no minor unit",
        """
        version: 1
        plans:
          - {key: p, name: P, currency: XYZ}
          - {key: q, name: Q, currency: XAU}
        customers:
          - {key: c, name: C, currency: EUR}
        """,
        [
            "{path}: plans[0].currency: 'XYZ' is not an ISO 4217 currency code "
            "(e.g. USD, EUR, JPY)",
            "{path}: plans[1].currency: 'XAU' has no minor unit in ISO 4217: "
            "invoices cannot be in it",
        ],
    ),
    (
        "typos in provider names",
        """
        version: 1
        providers: [{name: my-vllm, flavor: openai, hosts: ["vllm.internal:8000"]}]
        consumers: [{name: a, inject: {antropic: KEY}}]
        features:
          - {key: f1, name: F1, meter: {provider: OpenAI}}
          - {key: f2, name: F2, meter: {provider: my-vlm}}
          - {key: f3, name: F3, meter: {provider: selfhosted}}
          - {key: f4, name: F4, meter: {provider: my-vllm}}
          - {key: f5, name: F5, meter: {provider: azure-openai}}
        """,
        [
            "{path}: consumers[0].inject.antropic: unknown provider 'antropic'; "
            "did you mean 'anthropic'?",
            "{path}: features[0].meter.provider: unknown provider 'OpenAI'; did you mean 'openai'?",
            "{path}: features[1].meter.provider: unknown provider 'my-vlm'; "
            "did you mean 'my-vllm'?",
            "{path}: features[2].meter.provider: unknown provider 'selfhosted'; known "
            "providers: anthropic, azure-openai, deepseek, fireworks, gemini, groq, mistral, "
            "my-vllm, openai, openrouter, together, xai (declare others under providers:)",
        ],
    ),
    (
        "gateway routes the proxy refuses at start (before: checked OK)",
        """
        version: 1
        providers: [{name: local-claude, flavor: anthropic, hosts: ["localhost:8000"]}]
        routes:
          - {path: /chat, provider: openai, model: gpt-4o}
          - {path: /embed, type: llm/v1/embeddings, provider: anthropic}
          - {path: /gemini, provider: gemini}
          - {path: /files, provider: openai, upstream_path: /v1/files}
          - {path: /local, type: llm/v1/completions, provider: local-claude}
        """,
        [
            "{path}: routes[1] (/embed): the anthropic API has no llm/v1/embeddings endpoint",
            "{path}: routes[2] (/gemini): a route to the gemini API needs a model "
            "(it is part of the path)",
            "{path}: routes[3] (/files): /v1/files is not an endpoint Meterline meters "
            "on the openai API",
            "{path}: routes[4] (/local): the anthropic API has no llm/v1/completions endpoint",
        ],
    ),
    (
        "a customer's currency",
        "version: 1\ncustomers: [{key: c, name: C, currency: usd}]\n",
        [
            "{path}: customers[0].currency: 'usd' is not an ISO 4217 currency code; "
            "did you mean 'USD'?"
        ],
    ),
    (
        "invalid YAML",
        "version: 1\nplans: [\n  - key: x\n",
        ["{path}: line 3, column 3: invalid YAML: expected the node content, but found '-'"],
    ),
    ("not a mapping", "- a\n- b\n", ["{path}: (top level): expected a mapping, got list"]),
    (
        "a union-typed field (was a line per member: limit.constrained-int, limit.literal[...])",
        """
        version: 1
        features: [{key: f, name: F, meter: {provider: openai}}]
        plans:
          - {key: p, name: P, currency: USD, entitlements: [{feature: f, limit: lots}]}
        """,
        ['{path}: plans[0].entitlements[0].limit: Input should be an integer >= 0 or "unlimited"'],
    ),
    (
        "a key written twice (the last one silently won: billed at 0.001, checked OK)",
        """
        version: 1
        features: [{key: f, name: F, meter: {provider: openai}}]
        plans:
          - key: p
            name: P
            currency: USD
            rate_cards:
              - key: t
                name: T
                feature: f
                price:
                  type: unit
                  amount: "1"
                  amount: "0.001"
        features: [{key: g, name: G, meter: {provider: openai}}]
        """,
        [
            "{path}: line 14: duplicate key 'amount' (first at line 13)",
            "{path}: line 15: duplicate key 'features' (first at line 2)",
        ],
    ),
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


def test_a_bad_currency_is_one_line_for_every_command(tmp_path: Path) -> None:
    """invoice preview used to print a traceback for ``currency: XYZ``."""
    s = setup(tmp_path)
    text = s.catalog_path.read_text(encoding="utf-8").replace("currency: USD", "currency: XYZ")
    write(s.catalog_path, text)
    for args in (
        ("invoice", "preview", "--customer", "alpha"),
        ("invoice", "generate", "--period", "2026-01"),
        ("usage",),
    ):
        result = run(s, *args)
        assert result.exit_code == 1
        assert "Traceback" not in result.stderr + result.stdout
        first = result.stderr.splitlines()[0]
        assert first == (
            f"Error: {s.catalog_path}: plans[0].currency: "
            "'XYZ' is not an ISO 4217 currency code (e.g. USD, EUR, JPY)"
        )
