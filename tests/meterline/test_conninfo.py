from __future__ import annotations

from pathlib import Path

import pytest

from addons.metering.redact import redact
from meterline.conninfo import locator_problem, one_line, shown
from meterline.store import StoreError, store

#: PostgreSQL connection strings given where a store is expected, and what to write.
MISGIVEN = [
    ("postgresql://u:s3cr3t@db/m", "ducklake:postgres:postgresql://u:***@db/m"),
    ("postgres:dbname=m password=s3cr3t", "ducklake:postgres:dbname=m password=***"),
    ("dbname=m host=db PASSWORD='s3 cr3t'", "ducklake:postgres:dbname=m host=db PASSWORD=***"),
    ("ducklake:dbname=m password=s3cr3t", "ducklake:postgres:dbname=m password=***"),
    ("ducklake:postgresql://u:s3cr3t@db/m", "ducklake:postgres:postgresql://u:***@db/m"),
    # the lake prefix in another case: opened as a file named after it
    ("DuckLake:postgres:dbname=m password=s3cr3t", "ducklake:postgres:dbname=m password=***"),
    ("DUCKLAKE:Postgres:dbname=m password=s3cr3t", "ducklake:postgres:dbname=m password=***"),
    ("Ducklake:dbname=m password=s3cr3t", "ducklake:postgres:dbname=m password=***"),
    ("DuckLake:metadata.ducklake", "ducklake:metadata.ducklake"),
]  # fmt: skip


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
        # without ducklake:postgres: too; any case, either quote, one left open
        ("postgresql://u:s3cr3t@db/m", "postgresql://u:***@db/m"),
        ("POSTGRES://u:s3@cr3t@db/m", "POSTGRES://u:***@db/m"),  # an @ left unencoded
        ("host=db PASSWORD='s3 cr3t' user=u", "host=db PASSWORD=*** user=u"),
        ('host=db Password="s3 cr3t" user=u', "host=db Password=*** user=u"),
        # libpq's rules: an unquoted value runs to the next blank not escaped by a
        # backslash, quotes in it included; a quoted one to its closing quote not escaped
        # (left open, to the end of the line, as libpq reads it)
        ("host=db password='s3cr3t user=u", "host=db password=***"),
        ("host=db password='s3cr3t user=u\nnext", "host=db password=***\nnext"),
        ("ducklake:postgres:user=b password=Pg\\ S3cret-7X: cannot open", "ducklake:postgres:user=b password=*** cannot open"),  # noqa: E501
        ("dbname=q password=Secret'Tail9: this database holds no lake", "dbname=q password=*** this database holds no lake"),  # noqa: E501
        ("password=a\\\\ b", "password=*** b"),  # an escaped backslash escapes no blank
        ("host=db password='it\\'s a secret' user=u", "host=db password=*** user=u"),
        ("host=db password='it\\'s'tail x", "host=db password=*** x"),  # glued to the quote
        ("password = \t'a b' x", "password = \t*** x"),
        ("host=db sslpassword=Ssl\\ Pass\\ 2 user=u", "host=db sslpassword=*** user=u"),
        ("host=db oauth_client_secret=Oa\\ Cs3 user=u", "host=db oauth_client_secret=*** user=u"),
        ("spool segment(s) to ducklake:postgres:user=b password=Pg\\ S3cret-7X", "spool segment(s) to ducklake:postgres:user=b password=***"),  # noqa: E501
    ],
)  # fmt: skip
def test_passwords_are_masked(text: str, masked: str) -> None:
    assert shown(text) == masked
    assert redact(text) == masked  # the proxy's log filter masks them too
    assert shown(f"{masked}: an error") == f"{masked}: an error"  # shown again: unchanged


def test_a_postgres_error_is_one_line() -> None:
    text = 'query "CREATE TABLE x": ERROR:  permission denied\nLINE 1: CREATE\n        ^'
    assert one_line(text) == 'query "CREATE TABLE x": ERROR:  permission denied'


@pytest.mark.parametrize("password", ["s3cr3t", "s3\\ cr3t", "s3cr3t'cr3t", "'s3\\'cr3t'"])
def test_a_lake_that_cannot_be_reached_names_no_password(password: str) -> None:
    locator = (
        "ducklake:postgres:host=127.0.0.1 port=1 dbname=m user=u "
        f"password={password} connect_timeout=1"
    )
    with pytest.raises(StoreError) as e:
        store(locator, wait_s=0).__enter__()
    assert "cr3t" not in str(e.value) and "password=***" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("locator,meant", MISGIVEN)
def test_a_connection_string_given_the_wrong_way_is_refused_before_duckdb_sees_it(
    locator: str, meant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bare, DuckDB made a file named after it (password included), or attached the
    PostgreSQL database itself; after ``ducklake:`` without ``postgres:``, a local lake
    catalog file of that name. Each error repeated the password."""
    monkeypatch.chdir(tmp_path)
    for read_only in (False, True):
        with pytest.raises(StoreError) as e:
            store(locator, read_only=read_only, wait_s=0).__enter__()
        message = str(e.value)
        assert "s3cr3t" not in message and "\n" not in message
        assert message == locator_problem(locator) and message.endswith(f"given as {meant})")
        assert redact(message) == message  # the proxy logs it through its filter as it is
    assert list(tmp_path.iterdir()) == []  # no file named after the connection string


@pytest.mark.parametrize(
    "locator",
    ["meterline.duckdb", "/var/lib/meterline/events.duckdb", "ducklake:postgres:dbname=m",
     "ducklake:postgres:postgresql://u@db/m", "ducklake:metadata.ducklake"],
)  # fmt: skip
def test_stores_are_not_taken_for_connection_strings(locator: str) -> None:
    assert locator_problem(locator) is None
