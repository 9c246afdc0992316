"""Reading a catalog file: YAML in, a validated :class:`Catalog` or one readable error out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from meterline.catalog.base import CatalogError
from meterline.catalog.root import Catalog, CatalogProblems
from meterline.catalog.uniquekeys import (
    DuplicateKeyError,
    FastUniqueKeyLoader,
    UniqueKeySafeLoader,
    load_unique_keys,
)


def _render_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("flat", "unit", "tiered", "package"):
            continue  # the discriminated-union tag pydantic adds to the path
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def render_validation_error(path: Path | str, error: ValidationError) -> str:
    lines: list[str] = []
    for err in error.errors():
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, CatalogProblems):
            lines.extend(f"{path}: {loc}: {msg}" for loc, msg in ctx_error.problems)
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{path}: {_render_loc(tuple(err['loc']))}: {msg}")
    return "\n".join(lines)


View = Callable[[dict[str, Any]], dict[str, Any]]
"""Narrows the parsed YAML before validation (the proxy's view: :mod:`meterline.proxycatalog`)."""


def parse_catalog(text: str, source: Path | str = "<catalog>", view: View | None = None) -> Catalog:
    try:
        return _parse_catalog(text, source, view)
    except RecursionError:  # a hostile or broken file nested thousands of levels deep
        raise CatalogError(f"{source}: nested too deeply to be a catalog") from None


def _parse_catalog(text: str, source: Path | str, view: View | None) -> Catalog:
    try:
        data = load_unique_keys(text, FastUniqueKeyLoader)
    except DuplicateKeyError as e:
        raise _duplicates_error(source, e) from None
    except yaml.YAMLError:
        data = None  # read again below with the pure-Python loader, for its exact message
    else:
        return _validate(data, source, view)
    try:
        data = load_unique_keys(text, UniqueKeySafeLoader)
    except DuplicateKeyError as e:  # PyYAML read past what libyaml refused, to a repeated key
        raise _duplicates_error(source, e) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(e, "problem", None) or str(e)
        raise CatalogError(f"{source}: {where}: invalid YAML: {problem}") from None
    return _validate(data, source, view)


def _duplicates_error(source: Path | str, error: DuplicateKeyError) -> CatalogError:
    """A key written twice would let the last one win silently (a price, a start date):
    an error, one line per repetition."""
    return CatalogError("\n".join(f"{source}: {d}" for d in error.duplicates))


def _validate(data: object, source: Path | str, view: View | None = None) -> Catalog:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CatalogError(f"{source}: (top level): expected a mapping, got {type(data).__name__}")
    if view is not None:
        data = view(data)
    try:
        return Catalog.model_validate(data)
    except ValidationError as e:
        raise CatalogError(render_validation_error(source, e)) from None


def load_catalog(path: Path | str, view: View | None = None) -> Catalog:
    """Read and validate a catalog file; raises :class:`CatalogError` with a readable message.

    ``view``: validate only what it leaves of the file (the proxy's sections), not all.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(f"{p}: file not found") from None
    except OSError as e:
        raise CatalogError(f"{p}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:  # saved as Latin-1 or another non-UTF-8 encoding
        raise CatalogError(
            f"{p}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}): "
            "save the catalog as UTF-8"
        ) from None
    return parse_catalog(text, p, view)
