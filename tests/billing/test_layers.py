"""The billing core knows no payment provider: no module of ``billing/`` itself (the
core; not ``billing/cli``, ``billing/stripe`` or the other subpackages) imports
``billing.stripe``, and nothing in ``billing/`` imports ``addons``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BILLING = Path(__file__).resolve().parents[2] / "billing"


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


#: The core: every module of billing/ but the CLI and the Stripe package (the core's own
#: subpackages, such as billing/usage/, included).
CORE = sorted(
    p for p in BILLING.rglob("*.py") if p.relative_to(BILLING).parts[0] not in ("cli", "stripe")
)


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(BILLING)))
def test_the_core_does_not_import_stripe(path: Path) -> None:
    assert not [n for n in imported(path) if n.startswith("billing.stripe") or n == "stripe"]


@pytest.mark.parametrize(
    "path", sorted(BILLING.rglob("*.py")), ids=lambda p: str(p.relative_to(BILLING))
)
def test_billing_does_not_import_the_proxy(path: Path) -> None:
    assert not [n for n in imported(path) if n.split(".")[0] == "addons"]
