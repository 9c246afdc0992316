from __future__ import annotations

import errno

from addons.metering.oserrors import describe


def test_describe() -> None:
    assert describe(OSError(errno.ENOSPC, "No space left on device")) == (
        "ENOSPC (No space left on device)"
    )
    duck = RuntimeError('IO Error: Could not write file "x": No space left on device')
    assert describe(duck).startswith("ENOSPC: IO Error")
    assert describe(ValueError("other")) == "other"
    # PostgreSQL's errors, as DuckDB passes them on, span lines: the writer logs one
    postgres = RuntimeError(
        "Failed to execute query: server closed the connection unexpectedly\n"
        "\tThis probably means the server terminated abnormally\n"
        "\tbefore or while processing the request.\n\nLINE 2: COMMIT\n        ^"
    )
    assert "\n" not in describe(postgres)
    assert describe(postgres).startswith("Failed to execute query: server closed")
