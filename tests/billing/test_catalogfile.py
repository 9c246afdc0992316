"""billing's fast catalog loader gives the reference loader's catalog and messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from billing.catalogfile import load_catalog
from meterline.catalog import CatalogError
from meterline.catalog import load_catalog as reference
from tests.billing.events import CATALOG, write

SAMPLE = Path(__file__).parents[2] / "catalog.yaml"


@pytest.mark.parametrize("text", [SAMPLE.read_text(), CATALOG], ids=["sample", "tests"])
def test_same_catalog_as_the_reference_loader(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "c.yaml", text)
    assert load_catalog(path) == reference(path)


@pytest.mark.parametrize(
    "text",
    [
        "version: 1\nplans: [\n  - key: x\n",  # invalid YAML
        "- a\n",  # not a mapping
        "",  # empty file
        "version: 1\nconsumers: [{name: A B}]\n",  # validation error
        "version: 1\nbogus: 1\n",
    ],
    ids=["yaml", "list", "empty", "invalid", "unknown-field"],
)
def test_same_outcome_as_the_reference_loader(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "c.yaml", text)
    try:
        expected: object = reference(path)
    except CatalogError as e:
        with pytest.raises(CatalogError) as err:
            load_catalog(path)
        assert str(err.value) == str(e)
    else:
        assert load_catalog(path) == expected


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError) as err:
        load_catalog(tmp_path / "none.yaml")
    assert str(err.value) == f"{tmp_path / 'none.yaml'}: file not found"
