"""A user's mistake in the proxy's options at start: one line naming the option, exit 1,
no traceback (mitmproxy prints a script's traceback for any error it raises at load)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.proxy import MeterProxy


@pytest.mark.parametrize(
    "options,line",
    [
        ({"meter_catalog": "missing.yaml"}, "meter_catalog: missing.yaml: file not found"),
        ({"meter_db": "no-such-dir/x.duckdb"}, "meter_db: no-such-dir is not a directory"),
        ({"meter_flush_interval": "soon"}, "meter_flush_interval: expected seconds"),
        ({"meter_unknown_keys": "deny"}, "meter_unknown_keys: expected one of record, reject"),
        # before: accepted, and meant `none` (abandoned calls metered as no output)
        ({"meter_abandoned_output": "Bound"}, "meter_abandoned_output: expected one of bound"),
        (  # a large request would reach the provider before the key check
            {"meter_unknown_keys": "reject", "stream_large_bodies": "10k"},
            "stream_large_bodies: mitmproxy would send a large request upstream before",
        ),
        # mitmproxy applies these after the addon loaded and hid its error: the proxy
        # ran unmetered, with no key check, and said nothing
        ({"meter_durable": "yes"}, "meter_durable: "),
        ({"meter_catlog": "x.yaml"}, "meter_catlog: no such option (did you mean meter_catalog?)"),
        ({"meter_db": ""}, "meter_db: empty"),  # DuckDB's in-memory database: events lost
        ({"meter_db": "."}, "meter_db: . is a directory"),  # before: failed at every flush
        ({"meter_flush_interval": "inf"}, "meter_flush_interval: expected seconds"),
        ({"meter_governance_failure": "dny"}, "meter_governance_failure: expected one of allow"),
        ({"meter_governance_share": "half"}, "meter_governance_share: expected one of demand"),
        # before: accepted, and an idle governed proxy spent a quarter of a core reading
        ({"meter_governance_refresh": "1e-300"}, "meter_governance_refresh: expected seconds"),
        # before: accepted, then every flush failed ("not a valid DuckDB database file")
        ({"meter_db": "notes.txt"}, "meter_db: notes.txt is not a DuckDB database file"),
        ({"meter_db": "fifo"}, "meter_db: fifo is not a regular file"),  # before: hung at start
        # before: the working directory became the spool
        ({"meter_spool": " "}, "meter_spool: empty (give the spool's directory)"),
    ],
    ids=["catalog", "db", "interval", "policy", "abandoned-output", "streamed-requests", "bool",
         "misspelt", "empty-db", "db-directory", "infinite-interval", "failure-policy",
         "share-policy", "tiny-refresh", "db-not-duckdb", "db-fifo", "empty-spool"],
)  # fmt: skip
def test_a_bad_option_at_start_is_one_line(
    tmp_path: Path, mitm_confdir: Path, test_catalog: Path, options: dict[str, str], line: str
) -> None:
    (tmp_path / "notes.txt").write_text("not a database, " * 8)
    os.mkfifo(tmp_path / "fifo")
    proxy = MeterProxy(tmp_path, catalog=test_catalog, confdir=mitm_confdir, options=options)
    run = subprocess.run(proxy.command(), capture_output=True, text=True, timeout=60, cwd=tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert f"meterline: {line}" in out and out.count("meterline: ") == 1, out
    assert "Traceback" not in out and "error in script" not in out, out
    assert not proxy.spool.exists() and not proxy.db.exists()  # nothing written
    assert (tmp_path / "notes.txt").read_text() == "not a database, " * 8


def test_an_option_given_twice_is_one_line(
    tmp_path: Path, mitm_confdir: Path, test_catalog: Path
) -> None:
    """``--set meter_catalog=a --set meter_catalog=b``: before, the addon was silently
    not loaded and every call passed unmetered."""
    proxy = MeterProxy(
        tmp_path,
        catalog=test_catalog,
        confdir=mitm_confdir,
        mitm_args=["--set", f"meter_catalog={test_catalog}"],
    )
    run = subprocess.run(proxy.command(), capture_output=True, text=True, timeout=60, cwd=tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "meterline: meter_catalog: Received multiple values" in out, out
    assert "Traceback" not in out and not proxy.db.exists(), out


@pytest.mark.parametrize(
    "name,value,problem",
    [("METERLINE_LAKE_DATA", "lake-data/", "must be an absolute path"),
     # before: -5 turned the proxy's maintenance off without a word; abc was logged
     ("METERLINE_LAKE_MAINTAIN_EVERY", "-5", "expected seconds >= 0"),
     ("METERLINE_LAKE_MAINTAIN_EVERY", "abc", "expected seconds >= 0"),
     ("METERLINE_LAKE_MAINTAIN_EVERY", "inf", "expected seconds >= 0"),
     ("METERLINE_LAKE_INGEST", "stage", "expected append or staged"),
     ("METERLINE_LAKE_MOVE_EVERY", "0", "expected seconds > 0")],
    ids=["relative-data", "negative-maintain-every", "maintain-every-not-seconds",
         "infinite-maintain-every", "ingest-misspelt", "move-every-zero"],
)  # fmt: skip
def test_a_lake_setting_that_no_flush_could_use_is_one_line_at_start(
    tmp_path: Path, mitm_confdir: Path, test_catalog: Path, name: str, value: str, problem: str
) -> None:
    """A relative ``METERLINE_LAKE_DATA`` cannot fix itself: before, the proxy started
    and every flush failed (kept in the spool) with the S3 hint added to the store's. A
    maintenance period that is no number of seconds is refused the same way."""
    proxy = MeterProxy(
        tmp_path,
        catalog=test_catalog,
        confdir=mitm_confdir,
        options={"meter_db": "ducklake:postgres:dbname=meterline host=127.0.0.1 port=1"},
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERLINE_")}
    env[name] = value
    run = subprocess.run(
        proxy.command(), capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env
    )
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    line = f"meterline: meter_db: {name}={value!r}: {problem}"
    if name == "METERLINE_LAKE_DATA":
        line = f"meterline: meter_db: {name}={value!r} {problem}"
    assert line in out and out.count("meterline: ") == 1, out
    assert "Traceback" not in out and not proxy.spool.exists(), out


def test_staged_ingest_on_a_lake_without_postgresql_is_one_line_at_start(
    tmp_path: Path, mitm_confdir: Path, test_catalog: Path
) -> None:
    """Staging needs the catalog's PostgreSQL: on a DuckDB-catalog lake every flush
    would fail, the events kept in the spool."""
    proxy = MeterProxy(
        tmp_path,
        catalog=test_catalog,
        confdir=mitm_confdir,
        options={"meter_db": f"ducklake:{tmp_path / 'meta.ducklake'}"},
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERLINE_")}
    env["METERLINE_LAKE_INGEST"] = "staged"
    run = subprocess.run(
        proxy.command(), capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env
    )
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    line = (
        "meterline: meter_db: METERLINE_LAKE_INGEST=staged needs a lake whose catalog is "
        "PostgreSQL (ducklake:postgres:...)"
    )
    assert line in out and out.count("meterline: ") == 1, out
    assert "Traceback" not in out and not proxy.spool.exists(), out


@pytest.mark.parametrize(
    "db,meant",
    [("postgresql://u:s3cr3t@db/m", "ducklake:postgres:postgresql://u:***@db/m"),
     ("postgres:dbname=m password=s3cr3t", "ducklake:postgres:dbname=m password=***"),
     ('host=db PASSWORD="s3 cr3t"', "ducklake:postgres:host=db PASSWORD=***"),
     ("ducklake:dbname=m password=s3cr3t", "ducklake:postgres:dbname=m password=***")],
    ids=["uri", "duckdb-postgres", "keywords", "ducklake-without-type"],
)  # fmt: skip
def test_a_connection_string_as_meter_db_is_one_line_without_its_password(
    tmp_path: Path, mitm_confdir: Path, test_catalog: Path, db: str, meant: str
) -> None:
    """Before: the URI's password in ``meter_db: postgresql:/u:s3cr3t@db is not a
    directory``; the others started, made a store file named after the connection string
    in the working directory (``postgres:`` tried to attach PostgreSQL itself), and the
    keywords' double-quoted password was logged at start."""
    options = {"meter_db": db}
    proxy = MeterProxy(tmp_path, catalog=test_catalog, confdir=mitm_confdir, options=options)
    before = sorted(tmp_path.iterdir())
    run = subprocess.run(proxy.command(), capture_output=True, text=True, timeout=60, cwd=tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "s3cr3t" not in out and out.count("meterline: ") == 1, out
    assert "meterline: meter_db: " in out and f"given as {meant})" in out, out
    assert "Traceback" not in out, out
    assert sorted(tmp_path.iterdir()) == before and not proxy.spool.exists()  # nothing made
