"""The built-in provider table (meterline/providers.py) and its one-line typo messages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from addons.metering.providers import BUILTIN_PROVIDERS as PROXY_PROVIDERS
from meterline.providers import BUILTIN_NAMES, BUILTIN_PROVIDERS, unknown_provider


def test_the_proxy_recognises_exactly_the_table() -> None:
    assert [(p.name, p.flavor, hosts) for p, hosts in PROXY_PROVIDERS] == [
        (p.name, p.flavor, p.hosts) for p in BUILTIN_PROVIDERS
    ]
    assert {p.name: p.auth for p, _ in PROXY_PROVIDERS}["azure-openai"] == "api-key"
    assert len(BUILTIN_NAMES) == len(BUILTIN_PROVIDERS)


def test_meterline_never_imports_addons_or_billing() -> None:
    """Layering: addons and billing meet only in meterline, which imports neither."""
    for path in sorted((Path(__file__).parents[2] / "meterline").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not [n for n in names if n.split(".")[0] in ("addons", "billing")], path


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("OpenAI", "openai"),  # names are exact: case differs
        ("antropic", "anthropic"),
        ("gemni", "gemini"),
        ("azure", "azure-openai"),  # a known name containing it
        ("grok", "groq"),
    ],
)
def test_a_typo_gets_the_closest_known_name(name: str, hint: str) -> None:
    assert unknown_provider(name, BUILTIN_NAMES) == (
        f"unknown provider {name!r}; did you mean {hint!r}?"
    )


def test_without_a_close_name_the_known_ones_are_listed() -> None:
    assert unknown_provider("my-vlm", ["openai", "anthropic"]) == (
        "unknown provider 'my-vlm'; known providers: anthropic, openai "
        "(declare others under providers:)"
    )
