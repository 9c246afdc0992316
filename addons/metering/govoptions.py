"""Governance's options (``--set meter_governance_...``) and the check of the refresh.

Declared in the addon's ``load`` next to the meter's own (:mod:`addons.metering.options`,
which checks the two policies' values with the others').
"""

from __future__ import annotations

from typing import Any

from mitmproxy import exceptions

FAILURE_POLICIES = ("allow", "deny")
SHARE_POLICIES = ("demand", "even", "none")

MIN_REFRESH_S = 0.1
"""The shortest refresh interval: each read of the store takes milliseconds of CPU."""


def add_options(loader: Any) -> None:
    loader.add_option(
        "meter_governance_refresh",
        str,  # mitmproxy cannot parse float options from --set
        "2.0",
        "Seconds between re-reads of entitlement usage and credit balances from the store "
        "(the fleet's overshoot bound grows with it).",
    )
    loader.add_option(
        "meter_governance_failure",
        str,
        "allow",
        "When usage cannot be read from the store at start: 'allow' (enforce limits on this "
        "proxy's own calls only, counted from zero, until it can) or 'deny' (refuse governed "
        "calls with 503 until it can; also once reads have failed for three refresh "
        "intervals while running).",
        choices=FAILURE_POLICIES,
    )
    loader.add_option(
        "meter_governance_share",
        str,
        "demand",
        "How a fleet's proxies on one lake divide what a hard limit has left between two "
        "refreshes: 'demand' (each admits its share, the call that crosses the last: a "
        "fifth of the rest split evenly, the remainder by what each proxy's calls asked in "
        "the round before), 'even' (1/n of the rest each) or 'none' (each may admit all "
        "of it: up to n times the rest in one refresh interval).",
        choices=SHARE_POLICIES,
    )


def parse_refresh(text: str) -> float:
    """``meter_governance_refresh`` in seconds, from :data:`MIN_REFRESH_S` to an hour."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not MIN_REFRESH_S <= value <= 3600:  # 1e-300 kept an idle proxy reading the store
        raise exceptions.OptionsError(
            f"meter_governance_refresh: expected seconds from {MIN_REFRESH_S} to 3600, got {text!r}"
        )
    return value
