"""The same event schema and SQL on a shared DuckLake with a real PostgreSQL catalog."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meterline.migrations import EVENT_MIGRATIONS, migrate
from meterline.store import EVENT_COLUMNS, store
from tests.support.postgres import create_database, postgres_server


@pytest.fixture(scope="module")
def lake() -> Iterator[str]:
    with postgres_server() as conninfo:
        yield f"ducklake:postgres:{conninfo}"


def test_two_writers_share_one_lake(
    lake: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METERLINE_LAKE_DATA", str(tmp_path / "lake-data"))
    monkeypatch.setenv("METERLINE_LAKE_INLINE_ROWS", "1000")
    insert = f"""
        INSERT INTO usage_events ({", ".join(EVENT_COLUMNS[:24])})
        SELECT * FROM (VALUES (?, TIMESTAMP '2026-03-01 10:00:00', now()::TIMESTAMP, 'acme',
            'sha256:00', 'openai', 'openai', 'gpt-4o', 10, 2, 0, 5, 1, false, 'chatcmpl-1',
            'req-1', 'POST', 'api.openai.com', '/v1/chat/completions', 200, false, 12.5, 3.0,
            ?)) AS b
        WHERE b.col0 NOT IN (SELECT event_id FROM usage_events)
    """
    with store(lake) as con:
        assert migrate(con, EVENT_MIGRATIONS) == [m.name for m in EVENT_MIGRATIONS]
        con.execute(insert, ["openai:chatcmpl-1", "proxy-a"])
    # a second proxy (another process in real life: the catalog is in PostgreSQL)
    with store(lake) as con:
        assert migrate(con, EVENT_MIGRATIONS) == []
        con.execute(insert, ["openai:chatcmpl-1", "proxy-b"])  # a replay: deduplicated
        con.execute(insert, ["openai:chatcmpl-2", "proxy-b"])
    with store(lake) as con:
        rows = con.execute(
            "SELECT event_id, proxy_id, input_tokens + cached_input_tokens + output_tokens "
            "FROM usage_events ORDER BY event_id"
        ).fetchall()
    assert rows == [("openai:chatcmpl-1", "proxy-a", 17), ("openai:chatcmpl-2", "proxy-b", 17)]
    # Small commits are inlined into the catalog (METERLINE_LAKE_INLINE_ROWS): no tiny files.
    assert not list((tmp_path / "lake-data").rglob("*.parquet"))
    monkeypatch.setenv("METERLINE_LAKE_INLINE_ROWS", "0")
    with store(lake) as con:
        con.execute(insert, ["openai:chatcmpl-3", "proxy-b"])
    assert list((tmp_path / "lake-data").rglob("*.parquet"))  # data files really are in the lake


def test_a_fleet_racing_to_create_a_new_lake_all_get_in(
    lake: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proxies started together all attach a lake nobody created yet; none may fail."""
    import threading

    monkeypatch.setenv("METERLINE_LAKE_DATA", str(tmp_path / "race-data"))
    conninfo = create_database(lake.removeprefix("ducklake:postgres:"), "race")
    fresh = f"ducklake:postgres:{conninfo}"
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def attach() -> None:
        barrier.wait()
        try:
            with store(fresh, wait_s=30) as con:
                migrate(con, EVENT_MIGRATIONS)
        except BaseException as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=attach) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with store(fresh) as con:
        assert con.execute("SELECT count(*) FROM usage_events").fetchone() == (0,)


def test_a_role_that_cannot_create_tables_gets_the_fix_in_one_line(
    lake: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL 15 lets only the owner create in ``public``: the error says what to do."""
    import subprocess

    from meterline.store import StoreError
    from tests.support.postgres import _bin_dir

    monkeypatch.setenv("METERLINE_LAKE_DATA", str(tmp_path / "data"))
    admin = lake.removeprefix("ducklake:postgres:")
    conninfo = create_database(admin, "notmine")
    subprocess.run(
        [str(_bin_dir() / "psql"), admin, "-q", "-c", "CREATE ROLE visitor LOGIN"],
        check=True,
        capture_output=True,
    )
    visitor = f"ducklake:postgres:{conninfo.replace('user=postgres', 'user=visitor')}"
    with pytest.raises(StoreError, match=r"must own the database.*OWNER meterline"):
        store(visitor, wait_s=0).__enter__()


def test_billing_on_a_database_with_no_lake_says_so_and_creates_none(
    lake: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong ``--db`` used to create an empty lake there and print ``(none)``: now one
    line and exit 1, and the database is left as it was. The proxy's writer still creates
    a lake on its first flush (``test_a_fleet_racing_to_create_a_new_lake_all_get_in``)."""
    import subprocess
    import sys

    from tests.support.postgres import _bin_dir

    monkeypatch.setenv("METERLINE_LAKE_DATA", str(tmp_path / "data"))
    admin = lake.removeprefix("ducklake:postgres:")
    conninfo = create_database(admin, "nolake")
    billing = Path(sys.executable).with_name("billing")
    catalog = Path(__file__).parents[2] / "catalog.yaml"
    outcomes = []
    commands = (["usage"], ["invoice", "generate", "--period", "2026-01"], ["lake", "maintain"])
    for command in commands:
        run = subprocess.run(
            [str(billing), "--db", f"ducklake:postgres:{conninfo}", "--catalog", str(catalog),
             *command],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        outcomes.append((run.returncode, run.stderr.strip().splitlines()))
    tables = subprocess.run(
        [str(_bin_dir() / "psql"), conninfo, "-tAq", "-c",
         "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    for code, lines in outcomes:
        assert code == 1 and len(lines) == 1, outcomes
        assert "holds no Meterline lake" in lines[0] and "Traceback" not in lines[0]
    assert tables == "0"


def test_a_lake_with_events_takes_a_column_added_later(
    lake: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lake a fleet filled before ``cache_write_1h_tokens`` existed is migrated in place:
    its events read 0 there, and a proxy of either age appends to it."""
    monkeypatch.setenv("METERLINE_LAKE_DATA", str(tmp_path / "lake-data"))
    conninfo = create_database(lake.removeprefix("ducklake:postgres:"), "older")
    older = f"ducklake:postgres:{conninfo}"
    before = [m for m in EVENT_MIGRATIONS if m.name < "0020"]
    row = (
        "TIMESTAMP '2026-03-01 10:00:00', now()::TIMESTAMP, 'acme', NULL, 'anthropic', "
        "'anthropic', 'claude-sonnet-4-5', 10, 0, 300, 5, 0, false, NULL, NULL, 'POST', 'h', "
        "'/v1/messages', 200, false, NULL, NULL, NULL"
    )
    with store(older) as con:
        migrate(con, before)
        con.execute(f"INSERT INTO usage_events ({', '.join(EVENT_COLUMNS[:24])}) "
                    f"VALUES ('old', {row})")  # fmt: skip
    with store(older) as con:
        upto_0020 = [m for m in EVENT_MIGRATIONS if m.name < "0030"]
        assert migrate(con, upto_0020) == ["0020_cache_write_1h"]
        con.execute(f"INSERT INTO usage_events ({', '.join(EVENT_COLUMNS[:24])}) "
                    f"VALUES ('older-proxy', {row})")  # fmt: skip
        con.execute(
            f"INSERT INTO usage_events ({', '.join(EVENT_COLUMNS[:26])}) "
            f"VALUES ('new', {row}, NULL, 700)"
        )
        rows = con.execute(
            "SELECT event_id, cache_write_tokens, cache_write_1h_tokens FROM usage_events "
            "ORDER BY event_id"
        ).fetchall()
    assert rows == [("new", 300, 700), ("old", 300, 0), ("older-proxy", 300, 0)]


def test_a_lake_filled_before_audio_was_counted_takes_the_audio_columns(
    lake: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 0030 (two columns in one migration) on a lake with events: they read 0,
    and a proxy of either age appends to it."""
    monkeypatch.setenv("METERLINE_LAKE_DATA", str(tmp_path / "lake-data"))
    conninfo = create_database(lake.removeprefix("ducklake:postgres:"), "before_audio")
    older = f"ducklake:postgres:{conninfo}"
    row = (
        "TIMESTAMP '2026-03-01 10:00:00', now()::TIMESTAMP, 'acme', NULL, 'openai', "
        "'openai', 'gpt-4o-audio-preview', 64, 0, 0, 9, 0, false, NULL, NULL, 'POST', 'h', "
        "'/v1/chat/completions', 200, false, NULL, NULL, NULL, NULL, 0"
    )
    columns = ", ".join(EVENT_COLUMNS[:26])
    with store(older) as con:
        migrate(con, [m for m in EVENT_MIGRATIONS if m.name < "0030"])
        con.execute(f"INSERT INTO usage_events ({columns}) VALUES ('old', {row})")
    with store(older) as con:
        upto_0030 = [m for m in EVENT_MIGRATIONS if m.name < "0040"]
        assert migrate(con, upto_0030) == ["0030_audio_tokens"]
        con.execute(f"INSERT INTO usage_events ({columns}) VALUES ('older-proxy', {row})")
        con.execute(
            f"INSERT INTO usage_events ({', '.join(EVENT_COLUMNS[:28])}) VALUES ('new', "
            f"{row.replace(', 64,', ', 20,')}, 44, 0)"
        )
        rows = con.execute(
            "SELECT event_id, input_tokens, audio_input_tokens, audio_output_tokens "
            "FROM usage_events ORDER BY event_id"
        ).fetchall()
    assert rows == [("new", 20, 44, 0), ("old", 64, 0, 0), ("older-proxy", 64, 0, 0)]


def test_a_lake_filled_before_web_searches_were_counted_takes_their_column(
    lake: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 0040 on a lake with events: they read 0 searches, an older proxy's
    insert (no such column) stores 0, a new one its count, and billing's sum sees them."""
    monkeypatch.setenv("METERLINE_LAKE_DATA", str(tmp_path / "lake-data"))
    conninfo = create_database(lake.removeprefix("ducklake:postgres:"), "before_search")
    older = f"ducklake:postgres:{conninfo}"
    row = (
        "TIMESTAMP '2026-03-01 10:00:00', now()::TIMESTAMP, 'acme', NULL, 'anthropic', "
        "'anthropic', 'claude-sonnet-4', 64, 0, 0, 9, 0, false, NULL, NULL, 'POST', 'h', "
        "'/v1/messages', 200, false, NULL, NULL, NULL, NULL, 0, 0, 0"
    )
    columns = ", ".join(EVENT_COLUMNS[:28])
    with store(older) as con:
        migrate(con, [m for m in EVENT_MIGRATIONS if m.name < "0040"])
        con.execute(f"INSERT INTO usage_events ({columns}) VALUES ('old', {row})")
    with store(older) as con:
        assert migrate(con, EVENT_MIGRATIONS) == [
            "0040_web_search_calls",
            "0050_cached_audio_input",
            "0060_service_tier",
            "0070_speed_inference_geo",
        ]
        con.execute(f"INSERT INTO usage_events ({columns}) VALUES ('older-proxy', {row})")
        con.execute(
            f"INSERT INTO usage_events ({', '.join(EVENT_COLUMNS)}) "
            f"VALUES ('new', {row}, 3, 0, 'flex', 'fast', 'us')"
        )
        rows = con.execute(
            "SELECT event_id, input_tokens, web_search_calls FROM usage_events ORDER BY event_id"
        ).fetchall()
        [(total,)] = con.execute("SELECT SUM(web_search_calls) FROM usage_events").fetchall()
        served = con.execute(
            "SELECT event_id, service_tier, speed, inference_geo FROM usage_events "
            "ORDER BY event_id"
        ).fetchall()
    assert rows == [("new", 64, 3), ("old", 64, 0), ("older-proxy", 64, 0)]
    assert total == 3
    # Events stored before 0070 read NULL speed and geography (standard, global).
    assert served == [
        ("new", "flex", "fast", "us"),
        ("old", None, None, None),
        ("older-proxy", None, None, None),
    ]
