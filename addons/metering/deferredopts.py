"""``--set meter_*`` values mitmproxy would apply after the addon loaded, checked first.

mitmproxy keeps ``--set`` values of a script's options until the script declares them,
and applies them right after its ``load`` hook; an error there (a value given twice, a
boolean given as ``yes``) is raised inside the script loader and never shown: the addon
is not registered and the proxy runs unmetered, silently (no key check in ``reject``
mode, no event). An option name that no addon declares (``meter_catlog``) waits forever,
also silently. :func:`refused` finds both while the addon can still say so and stop the
proxy. It uses mitmproxy's own parser (a private method: mitmproxy is pinned to 12.x in
pyproject.toml), so a value is judged exactly as mitmproxy would judge it.
"""

from __future__ import annotations

import difflib
from typing import Any

from mitmproxy import exceptions

PREFIX = "meter_"


def refused(options: Any) -> list[str]:
    """One message per bad deferred ``meter_*`` value; those values are dropped (so
    mitmproxy's own apply cannot fail on them and hide it)."""
    known = [name for name, _ in options.items() if name.startswith(PREFIX)]
    problems: list[str] = []
    for name, value in list(options.deferred.items()):
        if not name.startswith(PREFIX):
            continue
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            problems.append(
                f"{name}: no such option" + (f" (did you mean {close[0]}?)" if close else "")
            )
            del options.deferred[name]
            continue
        strings = getattr(value, "val", None)  # --set values not yet converted
        if strings is None:
            continue
        try:
            options._parse_setval(options._options[name], strings)
        except exceptions.OptionsError as e:
            given = ", ".join(repr(s) for s in strings)
            problems.append(f"{name}: {e} (given: {given})")
            del options.deferred[name]
    return problems
