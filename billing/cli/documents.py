"""Writing documents: text to stdout, PDF bytes to a file or a redirected stdout."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from billing.documents.pdf import PdfError, html_to_pdf

T = TypeVar("T")


def output_option() -> Callable[[T], T]:
    return click.option(  # type: ignore[return-value]
        "-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
        help="Write to this file instead of stdout.",
    )  # fmt: skip


def emit(text: str, fmt: str, output: Path | None) -> None:
    """``fmt == "pdf"``: ``text`` is the HTML to print; never dumped onto a terminal."""
    if fmt != "pdf":
        if output is None:
            click.echo(text)
        else:
            _write(output, (text + "\n").encode("utf-8"))
        return
    if output is None and sys.stdout.isatty():
        raise click.ClickException("a PDF is binary: redirect stdout or give -o FILE.pdf")
    try:
        data = html_to_pdf(text)
    except PdfError as e:
        raise click.ClickException(str(e)) from None
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        _write(output, data)


def _write(output: Path, data: bytes) -> None:
    """``-o``: a path that cannot be written (no such directory, a directory, read-only)
    is one line, not a traceback."""
    try:
        output.write_bytes(data)
    except OSError as e:
        raise click.ClickException(f"-o {output}: cannot write: {e.strerror}") from None
