"""A DuckLake whose data path is object storage: a local S3 server (moto) on 127.0.0.1.

The writer, billing's reads and a maintenance pass go through DuckDB's httpfs with the
endpoint, URL style, SSL and credentials Meterline takes from the environment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner

from addons.metering.spool import Spool
from addons.metering.writer import SpoolWriter
from billing.cli import main as billing_main
from meterline import lakerepair
from meterline.lakemaint import maintain
from meterline.store import StoreError, store
from tests.meterline.test_lakemaint import event, write_batches
from tests.support.postgres import create_database, free_port, postgres_server

_SERVERS: dict[str, int] = {}
"""S3 endpoint -> the moto server's pid (to stop it: a hung object store)."""


@contextmanager
def _moto_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1; yields its ``host:port``."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        _SERVERS[f"127.0.0.1:{port}"] = proc.pid
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    with _moto_server() as endpoint:
        yield endpoint


def _client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=f"http://{endpoint}",
        aws_access_key_id="meterline-test",
        aws_secret_access_key="meterline-secret",
        region_name="eu-west-1",
    )


def _objects(endpoint: str, bucket: str) -> list[str]:
    pages = _client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _use_s3(monkeypatch: Any, endpoint: str, bucket: str) -> None:
    _client(endpoint).create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    for name, value in {
        "METERLINE_LAKE_DATA": f"s3://{bucket}/lake/",
        "METERLINE_S3_ENDPOINT": endpoint,
        "METERLINE_S3_REGION": "eu-west-1",
        "METERLINE_S3_URL_STYLE": "path",
        "METERLINE_S3_USE_SSL": "false",
        "AWS_ACCESS_KEY_ID": "meterline-test",
        "AWS_SECRET_ACCESS_KEY": "meterline-secret",
        "METERLINE_LAKE_INLINE_ROWS": "0",  # a Parquet object per flush, to compact
        "METERLINE_LAKE_MAINTAIN_EVERY": "0",
    }.items():
        monkeypatch.setenv(name, value)


def test_writer_billing_and_compaction_on_s3(s3: str, tmp_path: Path, monkeypatch: Any) -> None:
    _use_s3(monkeypatch, s3, "meterline-events")
    with postgres_server() as server:
        lake = f"ducklake:postgres:{create_database(server, 's3lake')}"
        write_batches(lake, tmp_path / "spool", batches=8, per_batch=3)
        parquet = [k for k in _objects(s3, "meterline-events") if "/usage_events/" in k]
        assert len(parquet) == 8 and all(k.startswith("lake/") for k in parquet)
        with store(lake) as con:
            rows = con.execute("SELECT * FROM usage_events ORDER BY event_id").fetchall()
            report = maintain(con, keep=timedelta(0))
        assert len(rows) == 24
        assert report.files_before == 8 and report.files_after == 1
        assert report.files_deleted >= 8  # the merged objects are gone from the bucket
        left = [k for k in _objects(s3, "meterline-events") if "/usage_events/" in k]
        assert len(left) == 1
        with store(lake) as con:  # a fresh reader (as billing is) sees the same events
            assert con.execute("SELECT * FROM usage_events ORDER BY event_id").fetchall() == rows
        # billing on another host sets no data path (the lake knows its own): the S3
        # settings must still reach the lake's own s3:// files
        monkeypatch.delenv("METERLINE_LAKE_DATA")
        with store(lake) as con:
            assert con.execute("SELECT * FROM usage_events ORDER BY event_id").fetchall() == rows
        # object storage that cannot be reached: one line saying what to check
        monkeypatch.setenv("METERLINE_S3_ENDPOINT", f"127.0.0.1:{free_port()}")
        result = CliRunner().invoke(billing_main, ["--db", lake, "usage"])
        assert result.exit_code == 1, result.output
        [line] = result.output.strip().splitlines()
        assert line.startswith("Error: cannot read the store: ") and "METERLINE_S3_ENDPOINT" in line


def test_wrong_s3_settings_are_one_clear_line(monkeypatch: Any) -> None:
    monkeypatch.setenv("METERLINE_LAKE_DATA", "s3://b/lake/")
    monkeypatch.setenv("METERLINE_S3_ENDPOINT", "http://127.0.0.1:9000")
    with pytest.raises(StoreError, match=r"METERLINE_S3_ENDPOINT=.*give host:port"):
        store("ducklake:postgres:dbname=x").__enter__()
    monkeypatch.setenv("METERLINE_LAKE_DATA", "relative/lake")
    with pytest.raises(StoreError, match=r"must be an absolute path"):
        store("ducklake:postgres:dbname=x").__enter__()


def test_a_flush_to_object_storage_that_hangs_fails_in_bounded_time(
    s3: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """The S3 server stops answering (SIGSTOP): the flush must fail within seconds, not
    hang for minutes (it took ~4 with httpfs's defaults), keeping its events; once the
    server answers again the next flush stores them once."""
    _use_s3(monkeypatch, s3, "meterline-hang")
    with postgres_server() as server:
        lake = f"ducklake:postgres:{create_database(server, 'hang')}"
        spool = Spool(tmp_path / "spool")
        writer = SpoolWriter(spool, lake)
        spool.append(event(0, "agent-0000", "s3"))
        assert writer.flush()
        os.kill(_SERVERS[s3], signal.SIGSTOP)
        try:
            spool.append(event(1, "agent-0000", "s3"))
            started = time.monotonic()
            assert not writer.flush()
            took = time.monotonic() - started
        finally:
            os.kill(_SERVERS[s3], signal.SIGCONT)
        assert took < 45, took
        assert writer.flush()
        writer.stop()
        spool.close()
        with store(lake) as con:
            assert con.execute(
                "SELECT count(*), count(DISTINCT event_id) FROM usage_events"
            ).fetchone() == (2, 2)


def test_billing_on_object_storage_that_hangs_fails_in_bounded_time(
    s3: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """``billing`` (and a proxy's maintenance pass, through the same attach) against a
    stopped S3 server waited httpfs's defaults, 30 s x 4 tries, ~2 minutes: only the
    writer's connection had the bounded HTTP settings. Now every lake attach has them, so
    the command fails in one line well within the bound (~10-20 s)."""
    _use_s3(monkeypatch, s3, "meterline-billing-hang")
    with postgres_server() as server:
        lake = f"ducklake:postgres:{create_database(server, 'billinghang')}"
        write_batches(lake, tmp_path / "spool", batches=2, per_batch=2)
        os.kill(_SERVERS[s3], signal.SIGSTOP)
        try:
            started = time.monotonic()
            result = CliRunner().invoke(billing_main, ["--db", lake, "usage"])
            took = time.monotonic() - started
        finally:
            os.kill(_SERVERS[s3], signal.SIGCONT)
        assert result.exit_code == 1, result.output
        [line] = result.output.strip().splitlines()
        assert line.startswith("Error: ") and "meterline-secret" not in line
        assert took < 60, took  # httpfs's defaults: 120 s and more
        assert CliRunner().invoke(billing_main, ["--db", lake, "usage"]).exit_code == 0


def test_a_lost_object_is_found_and_dropped_on_s3(
    s3: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """``billing lake repair``'s check lists the bucket (one listing per table) and finds
    the object the catalog names but the bucket lost; dropping it makes the lake
    readable again. The read error names the command, not the S3 settings."""
    from meterline.lakerepair import dangling_files, drop_files

    _use_s3(monkeypatch, s3, "meterline-lost")
    with postgres_server() as server:
        lake = f"ducklake:postgres:{create_database(server, 'lostobject')}"
        write_batches(lake, tmp_path / "spool", batches=3, per_batch=2)
        key = sorted(k for k in _objects(s3, "meterline-lost") if "/usage_events/" in k)[0]
        _client(s3).delete_object(Bucket="meterline-lost", Key=key)
        result = CliRunner().invoke(billing_main, ["--db", lake, "usage"])
        assert result.exit_code == 1 and "billing lake repair" in result.output
        assert "METERLINE_S3_ENDPOINT" not in result.output
        with store(lake) as con:
            [lost] = dangling_files(con)
            assert lost.path == f"s3://meterline-lost/{key}" and lost.record_count == 2
            assert drop_files(con, [lost]) == 1
        with store(lake) as con:
            assert dangling_files(con) == []
            assert con.execute("SELECT count(*) FROM usage_events").fetchone() == (4,)


def test_a_missing_bucket_or_another_endpoint_is_not_a_lost_file(
    s3: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """A 404 from object storage that is not the lake's (a bucket not made yet, an
    endpoint naming another S3 server) named `billing lake repair ... --drop`: the
    message names the bucket and the endpoint, and nothing is dropped."""
    _use_s3(monkeypatch, s3, "meterline-there")
    with postgres_server() as server:
        monkeypatch.setenv("METERLINE_LAKE_DATA", "s3://meterline-not-made/lake/")
        new = f"ducklake:postgres:{create_database(server, 'nobucket')}"
        spool = Spool(tmp_path / "spool")
        writer = SpoolWriter(spool, new)
        spool.append(event(0, "alice", "p"))
        assert not writer.flush()
        writer.stop()
        spool.close()
        error = writer._last_error or ""
        assert f"bucket meterline-not-made exists at {s3}" in error, error
        assert "--drop` removes" not in error
        monkeypatch.setenv("METERLINE_LAKE_DATA", "s3://meterline-there/lake/")
        lake = f"ducklake:postgres:{create_database(server, 'otherendpoint')}"
        write_batches(lake, tmp_path / "spool2", batches=2, per_batch=2)
        with _moto_server() as other:  # a proxy pointed at another S3 server
            monkeypatch.setenv("METERLINE_S3_ENDPOINT", other)
            spool = Spool(tmp_path / "spool3")
            writer = SpoolWriter(spool, lake)
            spool.append(event(9, "alice", "p"))
            assert not writer.flush()
            writer.stop()
            spool.close()
            error = writer._last_error or ""
            assert f"bucket meterline-there exists at {other}" in error, error
            assert "--drop` removes" not in error
            monkeypatch.delenv("METERLINE_LAKE_DATA")
            usage = CliRunner().invoke(billing_main, ["--db", lake, "usage"])
            assert usage.exit_code == 1 and f"exists at {other}" in usage.output, usage.output
            assert "--drop` removes" not in usage.output
            repair = CliRunner().invoke(billing_main, ["--db", lake, "lake", "repair", "--drop"])
            assert repair.exit_code == 1 and "nothing listed or dropped" in repair.output
        monkeypatch.setenv("METERLINE_S3_ENDPOINT", s3)
        spool = Spool(tmp_path / "spool3")  # the lake's own endpoint: its marker, read back
        writer = SpoolWriter(spool, lake)
        assert writer.flush()
        writer.stop()
        spool.close()
        with store(lake) as con:
            assert con.execute("SELECT count(*) FROM usage_events").fetchone() == (5,)


def test_a_mistyped_bucket_on_the_first_start_creates_no_lake(
    s3: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """The first flush into an empty database created the lake bound to the mistyped
    bucket: once METERLINE_LAKE_DATA was corrected, every flush and billing command was
    refused (DuckLake's "does not match existing data path"). Now the data path takes a
    write before the catalog is created: nothing is created, and the corrected start
    creates the lake with no cleanup by hand."""
    _use_s3(monkeypatch, s3, "meterline-typo")
    with postgres_server() as server:
        conninfo = create_database(server, "typo")
        lake = f"ducklake:postgres:{conninfo}"
        monkeypatch.setenv("METERLINE_LAKE_DATA", "s3://meterline-typ/lake/")
        spool = Spool(tmp_path / "spool")
        writer = SpoolWriter(spool, lake)
        spool.append(event(0, "alice", "p"))
        assert not writer.flush()
        writer.stop()
        spool.close()
        error = writer._last_error or ""
        assert "cannot create the lake" in error and "nothing was created" in error, error
        assert f"bucket meterline-typ exists at {s3}" in error, error
        usage = CliRunner().invoke(billing_main, ["--db", lake, "usage"])
        assert usage.exit_code == 1 and "holds no Meterline lake" in usage.output, usage.output

        monkeypatch.setenv("METERLINE_LAKE_DATA", "s3://meterline-typo/lake/")
        spool = Spool(tmp_path / "spool")  # the same spool: its event is still there
        writer = SpoolWriter(spool, lake)
        assert writer.flush(), writer._last_error
        writer.stop()
        spool.close()
        usage = CliRunner().invoke(billing_main, ["--db", lake, "usage", "--format", "json"])
        assert usage.exit_code == 0, usage.output
        with store(lake) as con:
            assert con.execute("SELECT count(*) FROM usage_events").fetchone() == (1,)
            assert lakerepair.data_path(con) == "s3://meterline-typo/lake/"
