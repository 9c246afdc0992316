"""YAML loaders that refuse a mapping key written twice.

PyYAML keeps the last of two equal keys without a word, so ``amount: "1"`` followed by
``amount: "0.001"`` in one price billed at 0.001 and passed every check. YAML itself
requires unique keys; these loaders (libyaml's parser and the pure-Python one, same
constructor) enforce it. Merge keys (``<<: *defaults``) are not counted: a key given
next to a merge overrides the merged one, as YAML intends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import BaseConstructor, SafeConstructor
from yaml.nodes import MappingNode

from meterline.catalog.exactnumbers import FLOAT_TAG, construct_exact_float

_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True, order=True)
class DuplicateKey:
    """A key written a second time at ``line`` (1-based), first at ``first_line``."""

    line: int
    first_line: int
    key: str

    def __str__(self) -> str:
        return f"line {self.line}: duplicate key {self.key} (first at line {self.first_line})"


class DuplicateKeyError(yaml.YAMLError):
    """The document repeats keys: every repetition, in file order, one per line of ``str``."""

    def __init__(self, duplicates: list[DuplicateKey]) -> None:
        super().__init__("\n".join(str(d) for d in duplicates))
        self.duplicates = duplicates


def duplicate_keys(constructor: BaseConstructor, node: MappingNode) -> list[DuplicateKey]:
    """Each repetition of a key in ``node``'s own pairs (merged ones aside).

    Keys compare as their values (``amount`` and ``"amount"`` are one key, ``1`` and
    ``"1"`` two), as in the mapping they build.
    """
    first_lines: dict[Any, int] = {}
    found: list[DuplicateKey] = []
    for key_node, _value in node.value:
        if key_node.tag == _MERGE_TAG:
            continue
        key = constructor.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            first = first_lines.get(key)
        except TypeError:  # unhashable: the constructor refuses such a key with its own message
            continue
        if first is None:
            first_lines[key] = line
        else:
            found.append(DuplicateKey(line, first, repr(key)))
    return found


def load_unique_keys(text: str, loader: type[UniqueKeyLoader]) -> Any:
    """``yaml.load`` with ``loader``, raising :class:`DuplicateKeyError` for all repeated
    keys at once (the file is read whole first: one edit fixes every one of them)."""
    reading = loader(text)
    try:
        data = reading.get_single_data()
    finally:
        reading.dispose()
    if reading.duplicates:
        raise DuplicateKeyError(sorted(reading.duplicates))
    return data


class UniqueKeyLoader(SafeConstructor):
    """The safe constructor, noting each mapping's repeated keys before merges are applied,
    and reading floats as exact Decimals (:mod:`meterline.catalog.exactnumbers`).

    The check runs where PyYAML first touches a mapping, :meth:`flatten_mapping`, and
    once per node: flattening rewrites a node in place (merged pairs prepended), and a
    node merged elsewhere may be flattened before it is built itself.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)  # type: ignore[call-arg]  # the loader's, with its parser
        self._checked: set[MappingNode] = set()
        self.duplicates: list[DuplicateKey] = []

    def flatten_mapping(self, node: MappingNode) -> None:
        if node not in self._checked:
            self._checked.add(node)
            self.duplicates.extend(duplicate_keys(self, node))
        super().flatten_mapping(node)

    def dispose(self) -> None:
        """Free the parser's state (libyaml's memory); the loaders below inherit theirs."""
        super().dispose()  # type: ignore[misc]


# an unquoted price is the Decimal written, never a float's approximation of it
UniqueKeyLoader.add_constructor(FLOAT_TAG, construct_exact_float)


class UniqueKeySafeLoader(UniqueKeyLoader, yaml.SafeLoader):
    """:class:`yaml.SafeLoader` refusing duplicate keys (gives PyYAML's exact syntax errors)."""


FastUniqueKeyLoader: type[UniqueKeyLoader] = UniqueKeySafeLoader
"""libyaml's parser when PyYAML has it (the pure-Python one takes ~0.4 s for 1,000
customers), with the same duplicate-key check."""
if hasattr(yaml, "CSafeLoader"):

    class _CUniqueKeySafeLoader(UniqueKeyLoader, yaml.CSafeLoader):
        pass

    FastUniqueKeyLoader = _CUniqueKeySafeLoader
