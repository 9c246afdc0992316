"""Which storage errors name a lost lake file (and so point to ``billing lake repair``)."""

from __future__ import annotations

import pytest

from meterline.lakerepair import names_a_lost_file

FILE = "s3://b/lake/main/usage_events/ducklake-0199a.parquet"


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        (f"HTTP Error: HTTP GET error on '{FILE}' (HTTP 404)", True),
        (f"IO Error: Cannot open file \"{FILE}\": No such file or directory", True),
        # before: the digits of a random port read as a 404 (a flaky test, and the wrong
        # hint for a server that cannot be reached)
        ("IO Error: Could not establish connection error for HTTP GET to "
         "'http://127.0.0.1:40483/b/lake/ducklake-0199a.parquet'", False),
        ("IO Error: Could not establish connection error for HTTP GET to "
         "'http://127.0.0.1:14049/b/lake/ducklake-04040.parquet'", False),
        ("HTTP 404 on a file that is not the lake's", False),
        # a write that found no bucket (a new lake's, another S3 server's): the storage's
        # settings to check, not a lost file to drop (an independent probe)
        ("HTTP Error: Unable to connect to URL http://127.0.0.1:55502/b/lake/main/"
         "schema_migrations/ducklake-0199a.parquet: NOT FOUND (HTTP code 404)", False),
    ],
)  # fmt: skip
def test_a_lost_file_is_a_404_or_a_missing_file(error: str, lost: bool) -> None:
    assert names_a_lost_file(error) is lost
