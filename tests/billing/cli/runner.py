"""Run the real ``billing`` CLI in-process (click's CliRunner) against files in tmp_path."""

from __future__ import annotations

from click.testing import CliRunner, Result

from billing.cli import main
from tests.billing.events import Setup


def run(
    s: Setup | None, *args: str, input: str | None = None, env: dict[str, str] | None = None
) -> Result:
    """``billing --db ... --catalog ... ARGS``; stdout and stderr are kept apart."""
    opts = [] if s is None else ["--db", str(s.db), "--catalog", str(s.catalog_path)]
    return CliRunner(env=env).invoke(
        main, [*opts, *args], input=input, catch_exceptions=False, prog_name="billing"
    )


def error(result: Result) -> str:
    """The one ``Error: ...`` message (stderr), asserting it is the whole of stderr."""
    lines = result.stderr.rstrip("\n").split("\n")
    assert lines[-1].startswith("Error: ") or lines[0].startswith("Error: "), result.stderr
    return result.stderr.rstrip("\n")
