"""A 0-byte ``--db`` file (``touch m.duckdb``, made in advance) just made: every command
says at once that it is an empty file, no database yet, and leaves nothing behind.

Reading commands used to take it for a file DuckDB was creating: they waited ~5 s,
asked the (absent) proxy to let go with ``m.duckdb.reader-waiting``, left that marker,
and said "no such database" of a file that is there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meterline.store import StoreError, open_store, reader_waiting_path
from tests.billing.cli.runner import error, run
from tests.billing.events import Setup, write_catalog


def _empty_store(tmp_path: Path) -> Setup:
    (tmp_path / "store").mkdir()
    db = tmp_path / "store" / "m.duckdb"
    db.touch()
    return Setup(db, write_catalog(tmp_path))


@pytest.mark.parametrize(
    "command",
    [
        ("usage",),
        ("invoice", "list"),
        ("entitlements",),
        ("invoice", "generate", "--period", "2026-01"),
    ],
)
def test_a_command_on_an_empty_file_says_so_and_leaves_no_marker(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    s = _empty_store(tmp_path)
    result = run(s, *command)
    assert result.exit_code == 1
    assert error(result) == (
        f"Error: {s.db}: no such database (an empty file: nothing metered yet?)"
    )
    assert sorted(p.name for p in s.db.parent.iterdir()) == ["m.duckdb"]
    assert s.db.stat().st_size == 0


def test_a_grant_on_an_empty_file_makes_it_the_store_and_says_it_was_empty(
    tmp_path: Path,
) -> None:
    s = _empty_store(tmp_path)
    result = run(s, "credits", "grant", "--customer", "alpha", "--amount", "5")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == (
        f"Note: {s.db} was an empty file: created a new, empty store "
        "(point the proxy's meter_db at it)\n"
    )
    assert sorted(p.name for p in s.db.parent.iterdir()) == ["m.duckdb"]
    assert run(s, "usage").exit_code == 0


def test_a_reader_that_gives_up_on_a_new_empty_file_leaves_no_marker(tmp_path: Path) -> None:
    """The wait for a file being created (its headers an instant away) asks no writer to
    let go: there is no lock to let go of."""
    db = tmp_path / "m.duckdb"
    db.touch()
    with pytest.raises(StoreError, match="not a valid DuckDB database file"):
        open_store(db, read_only=True, wait_s=0.2)  # gives up before it is 5 s old
    assert not reader_waiting_path(db).exists()
