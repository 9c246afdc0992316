"""Load catalog.yaml for billing commands, fast on big catalogs, with the same messages.

``meterline.catalog.load_catalog`` parses YAML with PyYAML's pure-Python loader: about
0.4 s for a catalog of 1,000 customers, a fifth of the time budget of ``billing invoice
generate``. Here the YAML is read with libyaml (``CSafeLoader``: same safe constructor,
same objects) and validated with the same model. Anything unusual (unreadable file, YAML
error, not a mapping) is handed to the reference loader, so every error message is
exactly the one ``meterline.catalog`` gives.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from meterline.catalog import Catalog, CatalogError, render_validation_error
from meterline.catalog import load_catalog as reference_load_catalog

_FAST_LOADER = getattr(yaml, "CSafeLoader", None)


def load_catalog(path: Path | str) -> Catalog:
    if _FAST_LOADER is None:
        return reference_load_catalog(path)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=_FAST_LOADER)  # noqa: S506 - CSafeLoader is safe
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return reference_load_catalog(path)
    if data is None or not isinstance(data, dict):
        return reference_load_catalog(path)
    try:
        return Catalog.model_validate(data)
    except ValidationError as e:
        raise CatalogError(render_validation_error(p, e)) from None
