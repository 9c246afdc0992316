"""The proxy knows nothing of invoices: no module of ``addons/`` imports ``billing``
(both halves meet only in ``meterline/``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.billing.test_layers import imported

ADDONS = Path(__file__).resolve().parents[2] / "addons"


@pytest.mark.parametrize(
    "path", sorted(ADDONS.rglob("*.py")), ids=lambda p: str(p.relative_to(ADDONS))
)
def test_the_proxy_does_not_import_billing(path: Path) -> None:
    assert not [n for n in imported(path) if n.split(".")[0] == "billing"]
