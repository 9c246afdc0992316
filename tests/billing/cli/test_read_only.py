"""Commands that only read open the store read-only and never change it.

They opened it writable and migrated it: a DuckDB file of someone else's got Meterline's
tables (and mode 0600) before ``(none)`` was printed, and a store on a read-only mount
could not be read at all.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest

from billing.store import all_migrations
from meterline.migrations import EVENT_MIGRATIONS, migrate
from tests.billing.cli.runner import error, run
from tests.billing.events import Event, Setup, add_events, setup, sql, utc
from tests.faults.disks import tmpfs, unavailable

READ_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("usage",),
    ("usage", "--unbilled"),
    ("invoice", "list"),
    ("invoice", "preview", "--customer", "alpha", "--at", "2026-03-15"),
    ("invoice", "show", "INV-000001"),
    ("invoice", "explain", "INV-000001", "2"),
    ("margin", "--period", "2026-03"),
    ("statement", "--customer", "alpha", "--period", "2026-03", "--format", "json"),
    ("entitlements",),
    ("credits", "list"),
    ("alerts", "list"),
    ("timeline", "--from", "2026-03-01", "--to", "2026-04-01"),
    ("health", "--from", "2026-03-01", "--to", "2026-04-01"),
    ("unbilled", "--from", "2026-03-01", "--to", "2026-04-01"),
    ("dashboard", "--port", "0"),  # fails at start-up, before serving, on a foreign file
)


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mode & 0o777


def bare(tmp_path: Path, name: str) -> Setup:
    """The catalog, and a store path ``name`` where nothing is yet."""
    return Setup(tmp_path / name, setup(tmp_path).catalog_path)


def invoiced(tmp_path: Path) -> Setup:
    """A store with March's events and invoices (INV-000001 has a usage line 2)."""
    s = setup(tmp_path)
    add_events(s.db, Event(utc("2026-03-02T10:00"), input=1000, output=100))
    assert run(s, "invoice", "generate", "--period", "2026-03").exit_code == 0
    return s


@pytest.mark.parametrize("args", READ_COMMANDS[:-1], ids=" ".join)
def test_a_read_leaves_the_store_as_it_was(tmp_path: Path, args: tuple[str, ...]) -> None:
    s = invoiced(tmp_path)
    s.db.chmod(0o644)
    before = snapshot(s.db)
    result = run(s, *args)
    assert result.exit_code == 0, result.stderr
    assert snapshot(s.db) == before


def refused_untouched(tmp_path: Path, args: tuple[str, ...]) -> None:
    """``billing ARGS`` on a DuckDB file of someone else's: one line, the file unchanged."""
    s = bare(tmp_path, "foreign.duckdb")
    with duckdb.connect(str(s.db)) as con:
        con.execute("CREATE TABLE mydata (a INT)")
    s.db.chmod(0o644)
    before = snapshot(s.db)
    result = run(s, *args)
    assert result.exit_code == 1
    assert error(result) == (
        f"Error: {s.db}: not a Meterline store (it has no metered events table: check --db)"
    )
    assert snapshot(s.db) == before


@pytest.mark.parametrize("args", READ_COMMANDS, ids=" ".join)
def test_a_foreign_duckdb_file_is_refused_untouched(tmp_path: Path, args: tuple[str, ...]) -> None:
    refused_untouched(tmp_path, args)


WRITE_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("invoice", "generate", "--period", "2026-03"),
    ("credits", "grant", "--customer", "alpha", "--amount", "5"),
    ("alerts", "deliver"),
)


@pytest.mark.parametrize("args", WRITE_COMMANDS, ids=" ".join)
def test_a_write_refuses_a_foreign_duckdb_file_untouched(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    """A writing command pointed at someone else's database added Meterline's tables."""
    refused_untouched(tmp_path, args)


def test_a_read_brings_an_older_store_up_to_date_once(tmp_path: Path) -> None:
    """A proxy's store has only the events' migrations: the first read adds billing's."""
    s = bare(tmp_path, "proxy.duckdb")
    with duckdb.connect(str(s.db)) as con:
        migrate(con, EVENT_MIGRATIONS)
    add_events(s.db, Event(utc("2026-03-02T10:00"), input=10))  # (migrates everything)
    with duckdb.connect(str(s.db)) as con:
        con.execute("DELETE FROM schema_migrations WHERE name = ?", [all_migrations()[-1].name])
    result = run(s, "usage", "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert '"input": 10' in result.stdout
    names = [r[0] for r in sql(s.db, "SELECT name FROM schema_migrations")]
    assert sorted(names) == sorted(m.name for m in all_migrations())


@contextmanager
def read_only_mount(path: Path) -> Iterator[Path]:
    """A tmpfs at ``path``, remounted read-only for the body (root only)."""
    with tmpfs(path, "64m"):
        yield path


def remount_read_only(path: Path) -> None:
    done = subprocess.run(["mount", "-o", "remount,ro", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        unavailable(f"cannot remount a tmpfs read-only here: {done.stderr.strip()}")


def test_a_store_on_a_read_only_mount_is_read(tmp_path: Path) -> None:
    with read_only_mount(tmp_path / "ro") as mount:
        s = invoiced(mount)
        remount_read_only(mount)
        usage = run(s, "usage", "--format", "json")
        assert usage.exit_code == 0, usage.stderr
        assert '"input": 1000' in usage.stdout
        show = run(s, "invoice", "show", "INV-000001")
        assert show.exit_code == 0, show.stderr
        assert show.stdout.startswith("Invoice  INV-000001")


def test_an_older_store_on_a_read_only_mount_says_what_to_do(tmp_path: Path) -> None:
    with read_only_mount(tmp_path / "ro") as mount:
        s = bare(mount, "proxy.duckdb")
        with duckdb.connect(str(s.db)) as con:
            migrate(con, EVENT_MIGRATIONS)  # as the proxy leaves it
        remount_read_only(mount)
        result = run(s, "usage")
        assert result.exit_code == 1
        message = error(result)
        assert message.startswith(
            f"Error: {s.db}: the store's schema is older than this billing (pending: 0101_"
        )
        assert "Read-only file system" in message
        assert message.endswith("run this command once with write access to the store")
