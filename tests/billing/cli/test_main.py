"""The root ``billing`` command: global options, environment, help, exit codes."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from billing.cli import main
from billing.store import billing_store
from tests.billing.cli.runner import run
from tests.billing.events import Event, add_events, setup, utc

BILLING = Path(sys.executable).parent / "billing"


def _commands(
    group: click.Group, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], click.Command]]:
    out = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # imports the lazily registered commands
        cmd = group.get_command(ctx, name)
        assert cmd is not None, name
        if name in ("stripe", "lake"):  # the Stripe and the fleet groups, tested with them
            continue
        if isinstance(cmd, click.Group):
            out += _commands(cmd, (*prefix, name))
        else:
            out.append(((*prefix, name), cmd))
    return out


COMMANDS = _commands(main)


def test_every_command_is_there() -> None:
    assert sorted(" ".join(p) for p, _ in COMMANDS) == [
        "alerts deliver",
        "alerts drop-orphaned",
        "alerts list",
        "alerts replay",
        "catalog check",
        "consumers fingerprint",
        "consumers list",
        "credits grant",
        "credits list",
        "dashboard",
        "entitlements",
        "health",
        "invoice explain",
        "invoice generate",
        "invoice list",
        "invoice preview",
        "invoice show",
        "margin",
        "statement",
        "timeline",
        "unbilled",
        "usage",
    ]
    with click.Context(main) as ctx:
        assert (
            main.get_command(ctx, "stripe")
            is importlib.import_module("billing.cli.stripe").stripe_group
        )


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_documents_an_example(path: tuple[str, ...], cmd: click.Command) -> None:
    result = run(None, *path, "--help")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"Usage: billing {' '.join(path)} ")
    example = result.stdout.split("Example usage:")[1]
    assert f"billing {' '.join(path)}" in example


def test_unknown_command_is_a_usage_error() -> None:
    result = run(None, "invoices")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (
        "Error: No such command 'invoices'. Did you mean 'invoice'?"
    )


def test_db_and_catalog_from_the_environment(tmp_path: Path) -> None:
    s = setup(tmp_path)
    add_events(s.db, Event(utc("2026-01-05"), input=7))
    env = {"METERLINE_DB": str(s.db), "METERLINE_CATALOG": str(s.catalog_path)}
    result = CliRunner(env=env).invoke(main, ["usage", "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].startswith("agent-a,alpha,7,")


def test_defaults_are_the_files_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = setup(tmp_path)
    assert (s.db.name, s.catalog_path.name) == ("meterline.duckdb", "catalog.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("METERLINE_DB", raising=False)
    monkeypatch.delenv("METERLINE_CATALOG", raising=False)
    result = CliRunner().invoke(main, ["catalog", "check"])
    assert result.stdout.startswith("catalog.yaml: OK (")


def test_the_console_script_exits_1_with_one_error_line(tmp_path: Path) -> None:
    s = setup(tmp_path)
    env = {**os.environ, "METERLINE_DB": str(s.db), "METERLINE_CATALOG": str(tmp_path / "no.yaml")}
    proc = subprocess.run(
        [str(BILLING), "invoice", "list"], env=env, capture_output=True, text=True, timeout=60
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        1,
        "",
        f"Error: {tmp_path / 'no.yaml'}: file not found\n",
    )


def test_no_progress_bar_when_stdout_is_not_a_terminal(tmp_path: Path) -> None:
    s = setup(tmp_path)  # no events: --allow-empty
    result = run(s, "invoice", "generate", "--period", "2026-01", "--allow-empty")
    assert result.exit_code == 0
    assert result.stderr == ""


@pytest.mark.parametrize(
    "args",
    [
        ("invoice", "generate", "--period", "2026-01", "--customer", ""),  # was: everyone's
        ("credits", "list", "--customer", " "),
        ("entitlements", "--customer", ""),
        ("usage", "--consumer", ""),
    ],
    ids=["generate", "credits", "entitlements", "usage"],
)
def test_an_empty_name_is_refused_not_read_as_everyone(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    """``--customer ""`` meant "every customer" to the code behind it: ``invoice
    generate`` finalized every customer's invoices, which cannot be undone."""
    s = setup(tmp_path)
    add_events(s.db, Event(utc("2026-01-05"), input=1000))
    result = run(s, *args)
    assert result.exit_code == 2 and "must not be empty" in result.stderr
    with billing_store(s.db) as con:
        assert con.execute("SELECT count(*) FROM invoices").fetchone() == (0,)


def test_an_empty_db_is_refused_not_kept_in_memory(tmp_path: Path) -> None:
    """``--db ""`` is DuckDB's in-memory database: a grant "stored" there was gone."""
    s = setup(tmp_path)
    result = CliRunner().invoke(
        main, ["--db", "", "--catalog", str(s.catalog_path), "credits", "grant",
               "--customer", "alpha", "--amount", "5.00"],
    )  # fmt: skip
    assert result.exit_code == 2 and "Invalid value for '--db': must not be empty" in result.output


def test_an_empty_catalog_is_refused_like_an_empty_db(tmp_path: Path) -> None:
    """``--catalog ""`` named the current directory: ``Error: .: cannot read: Is a
    directory`` (exit 1), where ``--db ""`` says what is wrong (exit 2)."""
    s = setup(tmp_path)
    result = CliRunner().invoke(main, ["--db", str(s.db), "--catalog", "", "usage"])
    assert result.exit_code == 2
    assert "Invalid value for '--catalog': must not be empty" in result.output


@pytest.mark.parametrize(
    "db",
    ["postgresql://u:s3cr3t@db/m", "postgres:dbname=m password=s3cr3t",
     "dbname=m host=db password='s3 cr3t'", "ducklake:dbname=m password=s3cr3t"],
)  # fmt: skip
def test_a_connection_string_as_db_is_one_line_without_its_password(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: ``Error: postgresql://u:s3cr3t@db/m: no such database``, password and all,
    and a command that writes made a DuckDB file named after it (``ducklake:dbname=...``
    a DuckLake catalog file) in the working directory."""
    s = setup(tmp_path / "setup")
    monkeypatch.chdir(tmp_path)
    for args in (["usage"], ["credits", "grant", "--customer", "alpha", "--amount", "5.00"],
                 ["lake", "maintain"]):  # fmt: skip
        result = CliRunner().invoke(
            main, ["--db", db, "--catalog", str(s.catalog_path), *args], prog_name="billing"
        )
        assert result.exit_code == 2, result.output
        [line] = [ln for ln in result.stderr.splitlines() if ln.startswith("Error: ")]
        assert line.startswith("Error: Invalid value for '--db': ") and "s3cr3t" not in line
        assert "given as ducklake:postgres:" in line, line
        assert "s3cr3t" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["setup"]  # no file made
