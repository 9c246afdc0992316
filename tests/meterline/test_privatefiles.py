from __future__ import annotations

import os
from pathlib import Path

from meterline.privatefiles import make_private, private_files
from meterline.store import store


def test_private_files_nest_and_restore_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with private_files():
            with private_files():
                (tmp_path / "a").write_text("x")
            (tmp_path / "b").write_text("x")
        (tmp_path / "c").write_text("x")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"a": 0o600, "b": 0o600, "c": 0o644}


def test_store_files_are_private(tmp_path: Path) -> None:
    db = tmp_path / "e.duckdb"
    old = os.umask(0o022)
    try:
        with store(db) as con:
            con.execute("CREATE TABLE t (a INT)")
            con.execute("INSERT INTO t VALUES (1)")
            wal = Path(str(db) + ".wal")
            if wal.exists():
                assert wal.stat().st_mode & 0o077 == 0
    finally:
        os.umask(old)
    assert db.stat().st_mode & 0o777 == 0o600


def test_make_private_fixes_an_old_file(tmp_path: Path) -> None:
    f = tmp_path / "old.duckdb"
    f.write_text("x")
    f.chmod(0o644)
    make_private(str(f))
    assert f.stat().st_mode & 0o777 == 0o600
