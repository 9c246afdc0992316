"""Unquoted YAML decimals read as the exact :class:`~decimal.Decimal` written.

PyYAML builds ``amount: 99999.123456789012`` as a float, which keeps ~15-17 significant
digits: the catalog billed 99999.123456789 and passed every check. Every number of a
catalog that is not an integer is money or a percentage (no field is a float), so a YAML
float is read as the Decimal of its source text instead: ``2.5`` stays ``2.5``, and a
price with more decimals than a money field allows is refused by that field's check
rather than shortened.
"""

from __future__ import annotations

import re
from decimal import Decimal

import yaml
from yaml.nodes import ScalarNode

FLOAT_TAG = "tag:yaml.org,2002:float"

# What YAML 1.1 calls a float and Decimal reads as written: ``2.5``, ``-.5``, ``1_000.25``,
# ``6.85e+5``. Left to PyYAML's float: ``.inf``, ``.nan`` and base 60 (``1:30.5``), which
# no money field takes anyway.
_PLAIN_DECIMAL = re.compile(r"[-+]?(?:[0-9][0-9_]*)?\.[0-9_]*(?:[eE][-+]?[0-9]+)?")


def construct_exact_float(
    constructor: yaml.SafeLoader | yaml.CSafeLoader, node: ScalarNode
) -> Decimal | float:
    """The Decimal a float scalar's text says (underscores dropped, as YAML 1.1 reads them)."""
    text = str(constructor.construct_scalar(node))
    if _PLAIN_DECIMAL.fullmatch(text) and any(c.isdigit() for c in text):
        return Decimal(text.replace("_", ""))
    return constructor.construct_yaml_float(node)
