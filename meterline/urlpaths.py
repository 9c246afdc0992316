"""A request path as the upstream server resolves it: one spelling per path, for the
proxy's decisions (is this a billed endpoint, which gateway route) and the catalog's
checks (two routes that are one path)."""

from __future__ import annotations

import posixpath
from urllib.parse import unquote


def normalise_path(path: str) -> str:
    """The path (query string and fragment dropped) as an upstream server resolves it:
    %-escapes decoded once, empty and ``.`` segments dropped, ``..`` applied. Free for
    the usual path, which has none of those. A fragment (``#x``: no client sends one, but
    many servers drop it) is cut before the decoding: ``%23`` stays part of the path."""
    path = path.split("?", 1)[0]
    if "#" in path:
        path = path.split("#", 1)[0]
    if "%" in path:
        path = unquote(path, errors="surrogateescape")
    if "//" in path or "/." in path:
        trailing = "/" if path.endswith("/") and len(path) > 1 else ""
        path = posixpath.normpath("/" + path.lstrip("/"))
        path = "/" + path.lstrip("/") + (trailing if path != "/" else "")
    return path
