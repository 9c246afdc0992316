from __future__ import annotations

import pytest

from addons.metering.redact import redact
from meterline.conninfo import one_line, shown
from meterline.store import StoreError, store


@pytest.mark.parametrize(
    "text,masked",
    [
        (
            "events -> ducklake:postgres:dbname=m host=db user=u password=s3cr3t via spool x",
            "events -> ducklake:postgres:dbname=m host=db user=u password=*** via spool x",
        ),
        ("ducklake:postgres:password = 'a b\\'c' dbname=m", "ducklake:postgres:password = *** dbname=m"),  # noqa: E501
        ("ducklake:postgres:postgresql://u:s3cr3t@db/m", "ducklake:postgres:postgresql://u:***@db/m"),
        ("ducklake:postgres:dbname=m host=db", "ducklake:postgres:dbname=m host=db"),
        ("ducklake:postgres:dbname=m sslkey=k sslpassword=Ssl6 x", "ducklake:postgres:dbname=m sslkey=k sslpassword=*** x"),  # noqa: E501
    ],
)  # fmt: skip
def test_passwords_are_masked(text: str, masked: str) -> None:
    assert shown(text) == masked
    assert redact(text) == masked  # the proxy's log filter masks them too


def test_a_postgres_error_is_one_line() -> None:
    text = 'query "CREATE TABLE x": ERROR:  permission denied\nLINE 1: CREATE\n        ^'
    assert one_line(text) == 'query "CREATE TABLE x": ERROR:  permission denied'


def test_a_lake_that_cannot_be_reached_names_no_password() -> None:
    locator = (
        "ducklake:postgres:host=127.0.0.1 port=1 dbname=m user=u password=s3cr3t connect_timeout=1"
    )
    with pytest.raises(StoreError) as e:
        store(locator, wait_s=0).__enter__()
    assert "s3cr3t" not in str(e.value) and "password=***" in str(e.value)
    assert "\n" not in str(e.value)
