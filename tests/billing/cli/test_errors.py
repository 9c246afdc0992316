"""User mistakes end in one ``Error: ...`` line and exit code 1, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from billing.cli import main
from tests.billing.events import CATALOG, Event, add_events, setup, utc, write

ALPHA_START = 'start: "2026-01-01T00:00:00Z"'


@pytest.mark.parametrize(
    ("edit", "args", "message"),
    [
        (
            ("billing_cadence: P1M", "billing_cadence: P99999Y"),
            ("invoice", "preview", "--customer", "alpha", "--at", "2026-01-10"),
            "Error: a billing period of the subscription starting 2026-01-01T00:00:00Z would "
            "end after the year 9999 (or start before the year 1)",
        ),
        (
            ('amount: "30.00"', 'amount: "1e400"'),
            ("invoice", "preview", "--customer", "alpha", "--at", "2026-01-10"),
            "Error: {catalog}: plans[0].rate_cards[0].price.amount: "
            "Input should be less than 1000000000000000",
        ),
        (
            ('amount: "2.00", per: 1000', 'amount: "999999999999999", per: 1'),
            ("invoice", "generate", "--period", "2026-01"),
            "Error: 4999999999999995000000000000000000 does not fit the store (at most 26 digits "
            "before the point); check the catalog's prices",
        ),
        (
            ("currency: USD", "currency: XYZ"),
            ("invoice", "preview", "--customer", "alpha"),
            "Error: {catalog}: plans[0].currency: "
            "'XYZ' is not an ISO 4217 currency code (e.g. USD, EUR, JPY)",
        ),
    ],
    ids=["huge-cadence", "huge-price", "unstorable-amount", "bad-currency"],
)
def test_one_line_no_traceback(
    tmp_path: Path, edit: tuple[str, str], args: tuple[str, ...], message: str
) -> None:
    s = setup(tmp_path)
    write(s.catalog_path, CATALOG.replace(edit[0], edit[1], 1) if edit[0] else CATALOG)
    add_events(s.db, Event(utc("2026-01-05"), input=5 * 10**18))
    result = CliRunner().invoke(
        main, ["--db", str(s.db), "--catalog", str(s.catalog_path), *args], prog_name="billing"
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert (result.exit_code, result.stderr) == (
        1,
        message.format(catalog=s.catalog_path) + "\n",
    )
    assert "Traceback" not in result.output
