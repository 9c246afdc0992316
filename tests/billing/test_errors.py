"""The user-error base and the unknown-customer message."""

from __future__ import annotations

import pytest

from billing.cli.common import cli_hint
from billing.errors import (
    BillingError,
    NotGenerated,
    NoUsage,
    UnknownCustomer,
    UserError,
    unknown_customer_message,
)
from billing.schedule import ScheduleError
from billing.stripe.amounts import AmountError
from billing.stripe.client import StripeFailure
from billing.stripe.errors import SyncError
from billing.usage import UsageError
from meterline.catalog import parse_catalog

CATALOG = parse_catalog(
    """
version: 1
consumers: [{name: agent-a}, {name: loose}]
plans: [{key: p, name: P, currency: USD}]
customers:
  - {key: beta, name: Beta, currency: USD, consumers: [agent-a]}
  - {key: alpha, name: Alpha, currency: USD}
"""
)


@pytest.mark.parametrize(
    "key,message",
    [
        ("zeta", "unknown customer 'zeta' (known customers: alpha, beta)"),
        ("agent-a", "unknown customer 'agent-a': 'agent-a' is a consumer, billed to "
                    "customer 'beta' (known customers: alpha, beta)"),
        ("loose", "unknown customer 'loose': 'loose' is a consumer, billed to no customer "
                  "(known customers: alpha, beta)"),
    ],
)  # fmt: skip
def test_unknown_customer_message(key: str, message: str) -> None:
    assert unknown_customer_message(CATALOG, key) == message
    assert str(UnknownCustomer(CATALOG, key)) == message


def test_no_customers_at_all() -> None:
    assert unknown_customer_message(parse_catalog("version: 1"), "x") == (
        "unknown customer 'x' (known customers: none in the catalog)"
    )


@pytest.mark.parametrize(
    "error",
    [BillingError, UnknownCustomer, UsageError, ScheduleError, SyncError, StripeFailure,
     AmountError],
)  # fmt: skip
def test_every_domain_error_is_a_user_error(error: type[Exception]) -> None:
    assert issubclass(error, UserError)


def test_domain_messages_name_no_flag_the_cli_adds_the_hint() -> None:
    missing = NotGenerated("2026-01")
    assert str(missing) == "no invoices for 2026-01: that month was never generated"
    assert cli_hint(missing) == "run `billing invoice generate --period 2026-01` first"
    assert "--" not in str(NoUsage("the store holds no usage events"))
    assert cli_hint(NoUsage("x")) == "pass --allow-empty to generate them anyway"
    assert cli_hint(UnknownCustomer(CATALOG, "zeta")) is None
