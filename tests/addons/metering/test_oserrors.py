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
