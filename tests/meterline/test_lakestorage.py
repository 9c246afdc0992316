"""A lake's data path that is not its storage from one host (a shared disk not mounted
there, a bucket emptied): no file is taken for lost and nothing is dropped or written.

Found by an independent probe: with the disk not mounted on one host, ``billing lake
repair`` listed every file as dangling and ``--drop`` removed them all (255 of 293
answered calls lost once the disk was back); a disk that vanished for 8 s under a
running proxy took 8 flushes into the empty mountpoint, hidden once it came back."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from addons.metering.spool import Spool
from addons.metering.writer import SpoolWriter
from billing.cli import main as billing_main
from meterline.lakemaint import maintain
from meterline.lakerepair import check_storage, dangling_files, ensure_marker, legacy_identity
from meterline.lakestorage import StorageUnreachable
from meterline.store import store
from tests.meterline.test_lakemaint import event, write_batches
from tests.support.postgres import create_database, postgres_server

CATALOG = Path(__file__).parents[2] / "catalog.yaml"
MARKER_NAME = ".meterline-lake"  # meterline.lakestorage.MARKER_NAME


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with postgres_server() as conninfo:
        yield conninfo


def _billing(lake: str, *args: str) -> Result:
    return CliRunner().invoke(billing_main, ["--db", lake, "--catalog", str(CATALOG), *args])


def _count(lake: str) -> int:
    with store(lake) as con:
        row = con.execute("SELECT count(DISTINCT event_id) FROM usage_events").fetchone()
    assert row is not None
    return int(row[0])


def _parquet(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.parquet"))


def test_a_disk_not_mounted_here_is_no_lost_file(
    server: str, tmp_path: Path, monkeypatch: Any
) -> None:
    mount = tmp_path / "mnt"
    monkeypatch.setenv("METERLINE_LAKE_DATA", f"{mount}/lake/")
    monkeypatch.setenv("METERLINE_LAKE_MAINTAIN_EVERY", "0")
    lake = f"ducklake:postgres:{create_database(server, 'unmounted')}"
    write_batches(lake, tmp_path / "spool", batches=3, per_batch=2)
    mount.rename(tmp_path / "mnt.away")  # this host: the disk is not mounted
    mount.mkdir()
    monkeypatch.delenv("METERLINE_LAKE_DATA")  # a billing host: the lake knows its path
    usage = _billing(lake, "usage")
    assert usage.exit_code == 1
    assert f"mounted at {mount}/lake/" in usage.output and "--drop` removes" not in usage.output
    for args in (("lake", "repair"), ("lake", "repair", "--drop")):
        refused = _billing(lake, *args)
        assert refused.exit_code == 1, refused.output
        assert "not its storage from here" in refused.output, refused.output
        assert "nothing listed or dropped" in refused.output
    shutil.rmtree(mount)  # the disk is back: nothing was dropped
    (tmp_path / "mnt.away").rename(mount)
    assert _count(lake) == 6
    with store(lake) as con:
        assert dangling_files(con) == []


def test_every_file_of_a_table_missing_is_not_dropped_without_force(
    server: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """The data path is there (with some of the lake's files) but every file of the
    events, from three commits, is gone: storage to check (a bucket emptied, another
    lake's path), not one commit's lost file. ``--drop --force`` drops them."""
    data = tmp_path / "data"
    monkeypatch.setenv("METERLINE_LAKE_DATA", f"{data}/")
    monkeypatch.setenv("METERLINE_LAKE_MAINTAIN_EVERY", "0")
    lake = f"ducklake:postgres:{create_database(server, 'tablegone')}"
    write_batches(lake, tmp_path / "spool", batches=3, per_batch=2)
    (data / MARKER_NAME).unlink(
        missing_ok=True
    )  # a lake older than the marker: judged by its files
    for path in _parquet(data / "main" / "usage_events"):
        path.unlink()
    listed = _billing(lake, "lake", "repair", "--drop")
    assert listed.exit_code == 1, listed.output
    assert "every file of main.usage_events (3 files, 6 rows, 3 commits)" in listed.output
    assert "--drop --force" in listed.output
    with store(lake) as con:
        assert len(dangling_files(con)) == 3  # nothing dropped
    forced = _billing(lake, "lake", "repair", "--drop", "--force")
    assert forced.exit_code == 0 and "dropped 3 file(s), 6 rows" in forced.output
    assert _count(lake) == 0


def test_a_writer_whose_disk_vanishes_writes_nothing_until_it_is_back(
    server: str, tmp_path: Path, monkeypatch: Any
) -> None:
    mount = tmp_path / "mnt"
    monkeypatch.setenv("METERLINE_LAKE_DATA", f"{mount}/lake/")
    monkeypatch.setenv("METERLINE_LAKE_MAINTAIN_EVERY", "0")
    lake = f"ducklake:postgres:{create_database(server, 'vanishing')}"
    spool = Spool(tmp_path / "spool")
    writer = SpoolWriter(spool, lake)
    try:
        spool.append(event(0, "alice", "p"))
        assert writer.flush()
        mount.rename(tmp_path / "mnt.away")  # unmounted under the running proxy
        mount.mkdir()
        for n in range(1, 4):
            spool.append(event(n, "alice", "p"))
            assert not writer.flush()  # kept in the spool
        assert _parquet(mount) == []  # nothing written into the empty mountpoint
        assert writer._last_error is not None and f"mounted at {mount}/lake/" in writer._last_error
        assert len(spool.sealed()) == 3
        shutil.rmtree(mount)
        (tmp_path / "mnt.away").rename(mount)
        assert writer.flush()
    finally:
        writer.stop()
        spool.close()
    assert _count(lake) == 4
    with store(lake) as con:
        assert dangling_files(con) == []


def test_an_existing_lake_without_marker_is_marked_where_its_files_are(
    server: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """A lake made by a release without the marker gets one at a writer's first attach,
    only where the data path holds the lake's files; elsewhere the writer refuses."""
    data = tmp_path / "data"
    monkeypatch.setenv("METERLINE_LAKE_DATA", f"{data}/")
    monkeypatch.setenv("METERLINE_LAKE_MAINTAIN_EVERY", "0")
    lake = f"ducklake:postgres:{create_database(server, 'unmarked')}"
    write_batches(lake, tmp_path / "spool", batches=2, per_batch=1)
    (data / MARKER_NAME).unlink(missing_ok=True)
    data.rename(tmp_path / "data.away")
    data.mkdir()  # a host where the path holds none of the lake's files
    spool = Spool(tmp_path / "spool2")
    writer = SpoolWriter(spool, lake)
    try:
        spool.append(event(5, "alice", "p"))
        assert not writer.flush()
        assert not (data / MARKER_NAME).exists() and _parquet(data) == []
        data.rmdir()
        (tmp_path / "data.away").rename(data)
        assert writer.flush()
        assert (data / MARKER_NAME).read_text().startswith("meterline lake ")
    finally:
        writer.stop()
        spool.close()
    assert _count(lake) == 3


@pytest.mark.parametrize(
    ("data_path", "hint"),
    [
        ("lake-data/", "must be an absolute path"),
        ("s3://another/lake/", "METERLINE_LAKE_DATA differs from the data path"),
    ],
)
def test_a_setup_mistake_is_logged_with_one_hint(
    server: str, tmp_path: Path, monkeypatch: Any, data_path: str, hint: str
) -> None:
    """The writer added the object storage hint to the store's own (both named an
    ``s3://`` path): two hints, the second pointing at the wrong settings."""
    monkeypatch.setenv("METERLINE_LAKE_DATA", f"{tmp_path}/data/")
    monkeypatch.setenv("METERLINE_LAKE_MAINTAIN_EVERY", "0")
    lake = f"ducklake:postgres:{create_database(server, 'mistake' + str(len(data_path)))}"
    write_batches(lake, tmp_path / "spool", batches=1, per_batch=1)
    monkeypatch.setenv("METERLINE_LAKE_DATA", data_path)
    spool = Spool(tmp_path / "spool2")
    writer = SpoolWriter(spool, lake)
    try:
        spool.append(event(1, "alice", "p"))
        assert not writer.flush()
    finally:
        writer.stop()
        spool.close()
    error = writer._last_error or ""
    assert hint in error and "check the lake's object storage settings" not in error, error


def test_deleting_orphans_keeps_the_marker(server: str, tmp_path: Path, monkeypatch: Any) -> None:
    """``ducklake_delete_orphaned_files`` deletes every file under the data path the lake
    does not name: the marker too, and counted it as an orphan."""
    data = tmp_path / "data"
    monkeypatch.setenv("METERLINE_LAKE_DATA", f"{data}/")
    monkeypatch.setenv("METERLINE_LAKE_MAINTAIN_EVERY", "0")
    lake = f"ducklake:postgres:{create_database(server, 'orphans')}"
    write_batches(lake, tmp_path / "spool", batches=1, per_batch=1)
    marker = data / MARKER_NAME
    text = marker.read_text()
    stray = data / "main" / "usage_events" / "ducklake-stray.parquet"
    stray.write_bytes(b"left by a writer killed mid-flush")
    for path in (marker, stray):
        os.utime(path, (time.time() - 3 * 86400,) * 2)
    with store(lake) as con:
        report = maintain(con, orphan_age=timedelta(days=1))
    assert report.orphans_deleted == 1 and not stray.exists()
    assert marker.read_text() == text


def _oldest_snapshot(lake: str) -> int:
    with store(lake) as con:
        row = con.execute(
            "SELECT min(snapshot_id) FROM __ducklake_metadata_lake.ducklake_snapshot"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_expiring_snapshots_keeps_the_lake_its_marker(
    server: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """The marker named the lake by its oldest surviving snapshot: the maintenance pass
    that expired it made the marker another lake's, and restarted proxies stored nothing,
    maintenance stopped, ``billing lake repair`` refused."""
    data = tmp_path / "data"
    monkeypatch.setenv("METERLINE_LAKE_DATA", f"{data}/")
    monkeypatch.setenv("METERLINE_LAKE_MAINTAIN_EVERY", "0")
    lake = f"ducklake:postgres:{create_database(server, 'expired')}"
    write_batches(lake, tmp_path / "spool", batches=3, per_batch=1)
    text = (data / MARKER_NAME).read_text()
    with store(lake) as con:
        maintain(con, keep=timedelta(0))
    assert _oldest_snapshot(lake) > 0  # the lake's first snapshots are gone
    assert (data / MARKER_NAME).read_text() == text
    with store(lake) as con:
        check_storage(con)
    write_batches(lake, tmp_path / "spool2", batches=1, per_batch=1)  # a restarted proxy
    repair = _billing(lake, "lake", "repair")
    assert repair.exit_code == 0, repair.output
    assert _count(lake) == 3  # its event 0 again: the same event


def test_an_earlier_releases_marker_is_kept_through_expiry(
    server: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """A marker an earlier release wrote (the oldest snapshot's time) is accepted while it
    matches, and given the lasting identity before maintenance expires that snapshot; one
    already outlived by its snapshot is accepted where the lake's files are."""
    data = tmp_path / "data"
    monkeypatch.setenv("METERLINE_LAKE_DATA", f"{data}/")
    monkeypatch.setenv("METERLINE_LAKE_MAINTAIN_EVERY", "0")
    lake = f"ducklake:postgres:{create_database(server, 'legacy')}"
    write_batches(lake, tmp_path / "spool", batches=2, per_batch=1)
    marker = data / MARKER_NAME
    current = marker.read_text()
    with store(lake) as con:
        old = legacy_identity(con)
    marker.write_text(old + "\n")
    with store(lake) as con:
        check_storage(con)
        maintain(con, keep=timedelta(0))
        assert legacy_identity(con) != old  # the earlier rule no longer holds
        check_storage(con)
    assert marker.read_text() == current
    # A lake whose earlier marker was outlived before this release: its files are there.
    marker.write_text(old + "\n")
    with store(lake) as con:
        check_storage(con)
        ensure_marker(con)
    assert marker.read_text() == current
    # Elsewhere (none of the lake's files), such a marker is another lake's.
    data.rename(tmp_path / "data.away")
    data.mkdir()
    marker.write_text(old + "\n")
    with store(lake) as con, pytest.raises(StorageUnreachable, match="belongs to another lake"):
        check_storage(con)


def test_billing_lake_maintain_refuses_storage_that_is_not_the_lakes(
    server: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """The proxies' passes check the marker before taking the lease (which writes a
    file); ``billing lake maintain`` did not: with another lake's marker in the data path
    (or the disk not mounted) it took the lease, merged and expired snapshots there.
    Now it refuses with the proxies' own line and changes nothing."""
    from addons.metering.lakejob import LakeMaintainer

    data = tmp_path / "data"
    monkeypatch.setenv("METERLINE_LAKE_DATA", f"{data}/")
    monkeypatch.setenv("METERLINE_LAKE_MAINTAIN_EVERY", "0")
    lake = f"ducklake:postgres:{create_database(server, 'maintainother')}"
    write_batches(lake, tmp_path / "spool", batches=3, per_batch=1)
    other = "meterline lake 00000000-0000-4000-8000-000000000000"
    (data / MARKER_NAME).write_text(other + "\n")
    files = _parquet(data)
    snapshots = _oldest_snapshot(lake)
    with pytest.raises(StorageUnreachable) as proxy_refused:
        LakeMaintainer(lake, every_s=0).run_once()
    refused = _billing(lake, "lake", "maintain", "--keep", "1")
    assert refused.exit_code == 1, refused.output
    assert refused.output == f"Error: {proxy_refused.value}\n"
    assert f"belongs to another lake ({other})" in refused.output
    assert _parquet(data) == files and _oldest_snapshot(lake) == snapshots  # nothing done
    assert (data / MARKER_NAME).read_text() == other + "\n"
    with store(lake) as con:  # no lease taken (its table is made with the first)
        tables = con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
    assert ("lake_leases",) not in tables
    (data / MARKER_NAME).unlink()  # the lake's files are there: its own storage
    assert _billing(lake, "lake", "maintain", "--keep", "1").exit_code == 0


def test_threads_of_one_process_write_the_marker_at_once(tmp_path: Path) -> None:
    """A proxy's writer and its lake maintainer (or two writers of one process) wrote
    the marker through one temporary name: the rename of one found the file gone, and
    its flush failed (ENOENT: cannot write the lake's marker)."""
    import threading

    import duckdb

    from meterline.lakestorage import write_marker

    data = str(tmp_path / "data")
    start = threading.Barrier(8)
    failures: list[BaseException] = []

    def write() -> None:
        con = duckdb.connect()
        start.wait()
        try:
            for _ in range(200):
                write_marker(con, data, "lake-1")
        except OSError as e:
            failures.append(e)
        finally:
            con.close()

    threads = [threading.Thread(target=write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert (tmp_path / "data" / MARKER_NAME).read_text() == "lake-1\n"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [MARKER_NAME]
