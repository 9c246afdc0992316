"""Entitlements: which limits apply, usage periods, counters, and reading used amounts.

The governance model both halves share (see README.md in this package): the proxy
(``addons/metering/governance.py``) enforces it before forwarding; billing shows it
(``billing entitlements``), grants credits and raises alerts from the same numbers.
"""

from meterline.entitlements.counters import Counters, Refusal, Reservation, Snapshot
from meterline.entitlements.policy import (
    Account,
    CustomerPolicy,
    Key,
    Limit,
    Policy,
    build_policy,
)
from meterline.entitlements.reading import (
    credit_balances,
    policy_usage,
    read_snapshot,
    unit_balances,
)

__all__ = [
    "Account",
    "Counters",
    "CustomerPolicy",
    "Key",
    "Limit",
    "Policy",
    "Refusal",
    "Reservation",
    "Snapshot",
    "build_policy",
    "credit_balances",
    "unit_balances",
    "policy_usage",
    "read_snapshot",
]
