"""``billing usage``: filters, grouping, formats, unbilled, errors."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from tests.billing.cli.runner import run
from tests.billing.events import Event, Setup, add_events, setup, utc


@pytest.fixture
def s(tmp_path: Path) -> Setup:
    s = setup(tmp_path)
    add_events(
        s.db,
        Event(utc("2026-03-02T10:00"), input=10, output=1),
        Event(utc("2026-03-04T11:00"), model="gpt-4o-mini", input=20, cached_input=2),
        Event(utc("2026-03-03"), consumer="agent-b", input=30),
        Event(utc("2026-01-09"), consumer="agent-b", input=40),
        Event(utc("2026-03-03"), consumer=None, output=60, key_fingerprint="sha256:" + "cd" * 32),
    )
    return s


def test_usage_table(s: Setup) -> None:
    result = run(s, "usage", "--from", "2026-03-01", "--to", "2026-04-01")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "CONSUMER  CUSTOMER  INPUT  CACHED_INPUT  CACHE_WRITE  CACHE_WRITE_1H  AUDIO_INPUT  CACHED_AUDIO_INPUT  OUTPUT  AUDIO_OUTPUT  WEB_SEARCH  TOTAL  EVENTS",  # noqa: E501
        "--------  --------  -----  ------------  -----------  --------------  -----------  ------------------  ------  ------------  ----------  -----  ------",  # noqa: E501
        "                        0             0            0               0            0                   0      60             0           0     60       1",  # noqa: E501
        "agent-a   alpha        30             2            0               0            0                   0       1             0           0     33       2",  # noqa: E501
        "agent-b   beta         30             0            0               0            0                   0       0             0           0     30       1",  # noqa: E501
    ]


def test_usage_json_by_customer_and_day(s: Setup) -> None:
    result = run(s, "usage", "--customer", "alpha", "--group-by", "day", "--format", "json")
    assert json.loads(result.stdout) == [
        {
            "consumer": "agent-a",
            "customer": "alpha",
            "day": "2026-03-02",
            "input": 10,
            "cached_input": 0,
            "cache_write": 0,
            "cache_write_1h": 0,
            "audio_input": 0,
            "cached_audio_input": 0,
            "output": 1,
            "audio_output": 0,
            "web_search": 0,
            "total": 11,
            "events": 1,
        },
        {
            "consumer": "agent-a",
            "customer": "alpha",
            "day": "2026-03-04",
            "input": 20,
            "cached_input": 2,
            "cache_write": 0,
            "cache_write_1h": 0,
            "audio_input": 0,
            "cached_audio_input": 0,
            "output": 0,
            "audio_output": 0,
            "web_search": 0,
            "total": 22,
            "events": 1,
        },
    ]


def test_usage_csv_by_consumer_model_type(s: Setup) -> None:
    result = run(s, "usage", "--consumer", "agent-a", "--group-by", "model,type", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["model"], r["token_type"], r["tokens"]) for r in rows] == [
        ("gpt-4o", "input", "10"),
        ("gpt-4o", "output", "1"),
        ("gpt-4o-mini", "input", "20"),
        ("gpt-4o-mini", "cached_input", "2"),
    ]


def test_unbilled(s: Setup) -> None:
    result = run(s, "usage", "--unbilled", "--format", "json")
    rows = json.loads(result.stdout)
    assert [(r["reason"], r["consumer"], r["key_fingerprint"], r["total"]) for r in rows] == [
        ("no rate card of plan 'plus' prices it", "agent-b", None, 30),
        ("outside subscriptions", "agent-b", None, 40),
        ("unknown key", None, "sha256:" + "cd" * 32, 60),
    ]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["--customer", "zeta"],
            1,
            "Error: unknown customer 'zeta' (known customers: alpha, beta, gamma)",
        ),
        (["--consumer", "nobody"], 1, "Error: unknown consumer 'nobody'"),
        (["--from", "2026-03-02", "--to", "2026-03-01"], 1, "Error: --to must be after --from"),
        (
            ["--customer", "alpha", "--consumer", "agent-a"],
            2,
            "Error: give --customer or --consumer, not both",
        ),
        (
            ["--group-by", "week"],
            2,
            "Error: --group-by: unknown dimension 'week' "
            "(choose from model, tier, speed, geo, type, day, refused)",
        ),
        (
            ["--from", "March"],
            2,
            "Error: Invalid value for '--from': 'March' is not a date or time such as "
            "2026-03-01 or 2026-03-01T12:00:00Z",
        ),
        (
            ["--format", "xml"],
            2,
            "Error: Invalid value for '--format': 'xml' is not one of 'table', 'json', 'csv'.",
        ),
    ],
)
def test_usage_errors(s: Setup, args: list[str], code: int, message: str) -> None:
    result = run(s, "usage", *args)
    assert result.exit_code == code
    assert result.stderr.splitlines()[-1] == message
    assert result.stdout == ""


def test_usage_on_a_missing_database(tmp_path: Path) -> None:
    s = setup(tmp_path)
    missing = tmp_path / "other.duckdb"
    result = run(Setup(missing, s.catalog_path), "usage")
    assert (result.exit_code, result.stderr) == (
        1,
        f"Error: {missing}: no such database (nothing metered yet?)\n",
    )
    assert not missing.exists()
