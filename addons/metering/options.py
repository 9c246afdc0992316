"""The meter's own mitmproxy options (``--set meter_...``) and the checks of their values.

Declared in :func:`add_options` (called from the addon's ``load``, as mitmproxy's own
addons do); the values that need more than a type are checked by :func:`check_db`,
:func:`parse_interval` and :func:`check_policies`, each raising ``OptionsError`` with a
one-line message naming the option (mitmproxy shows it; at start the addon logs it and
exits, no traceback). Governance's three are declared in
:func:`addons.metering.govoptions.add_options`.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from mitmproxy import exceptions

from addons.metering import govoptions
from addons.metering.lakejob import maintain_every_s
from meterline.conninfo import LAKE_PREFIX, locator_problem, shown
from meterline.lakeconfig import LakeConfigError, lake_settings
from meterline.lakestage import POSTGRES_LAKE_PREFIX
from meterline.store import DEFAULT_CATALOG, DEFAULT_DB, looks_like_duckdb

UNKNOWN_KEY_POLICIES = ("record", "reject")
ABANDONED_OUTPUT = ("bound", "none")
STREAMED_REQUESTS = (
    "stream_large_bodies: mitmproxy would send a large request upstream before the meter "
    "refuses an unknown key, injects a provider key or applies a limit; unset it (the "
    "meter streams the responses it must)"
)


def add_options(loader: Any) -> None:
    loader.add_option(
        "meter_db",
        str,
        os.environ.get("METERLINE_DB", DEFAULT_DB),
        "Usage event store: a DuckDB file, or a 'ducklake:...' locator "
        "(default: $METERLINE_DB or meterline.duckdb).",
    )
    loader.add_option(
        "meter_catalog",
        str,
        os.environ.get("METERLINE_CATALOG", DEFAULT_CATALOG),
        "Catalog YAML with providers and consumers (default: $METERLINE_CATALOG "
        "or catalog.yaml). Edits to the file are picked up within a second; an edit "
        "that does not validate is logged and the catalog in use is kept.",
    )
    loader.add_option(
        "meter_spool",
        str,
        "meterline-spool",
        "Directory of the local event spool (one per proxy); leftovers are replayed "
        "into the store on start.",
    )
    loader.add_option(
        "meter_unknown_keys",
        str,
        "record",
        "What to do with a request whose API key is not in the catalog: 'record' "
        "(forward, meter with no consumer) or 'reject' (answer 401, never forwarded).",
        choices=UNKNOWN_KEY_POLICIES,
    )
    loader.add_option(
        "meter_include_usage",
        bool,
        True,
        "Add stream_options.include_usage to OpenAI streaming requests that lack it "
        "(and hide the extra usage chunk from the client).",
    )
    loader.add_option(
        "meter_flush_interval",
        str,  # mitmproxy cannot parse float options from --set
        "1.0",
        "Seconds between writes of spooled events to the store (e.g. 1.0).",
    )
    loader.add_option(
        "meter_abandoned_output",
        str,
        "bound",
        "A non-streamed call whose client left before any answer (the provider finishes "
        "and bills it unseen): 'bound' meters its output as the most it could be (the "
        "request's own bound, else the model's, what the limits held for it), 'none' as 0.",
        choices=ABANDONED_OUTPUT,
    )
    loader.add_option(
        "meter_log_payloads",
        bool,
        False,
        "Include request/response excerpts in warnings about unreadable bodies.",
    )
    loader.add_option(
        "meter_durable",
        bool,
        True,
        "Spool each API call's event before the end of its response reaches the client, "
        "so a crash never loses an answered call. False: meter right after the reply "
        "(a little less latency; a kill -9 can lose the last calls' events).",
    )
    loader.add_option(
        "meter_fast_dispatch",
        bool,
        True,
        "Hand each mitmproxy hook only to the addons that have it (an index of "
        "mitmproxy's own dispatch, rebuilt when addons are loaded or removed). False: "
        "mitmproxy's walk of every addon, for an addon that adds hooks without "
        "mitmproxy's addon manager.",
    )
    loader.add_option(
        "meter_proxy_id",
        str,
        socket.gethostname(),
        "Name of this proxy, stored with each event (default: the host name).",
    )


def check_policies(options: Any) -> None:
    """The policy options' values (``choices`` is not enforced for a value set before the
    option was declared: ``--set`` on the command line, a config file). Before, a typo in
    ``meter_abandoned_output`` (``Bound``) started the proxy and meant ``none``: a client
    that always gave up passed any hard cap, unsaid."""
    for name, allowed in (
        ("meter_unknown_keys", UNKNOWN_KEY_POLICIES),
        ("meter_governance_failure", govoptions.FAILURE_POLICIES),
        ("meter_governance_share", govoptions.SHARE_POLICIES),
        ("meter_abandoned_output", ABANDONED_OUTPUT),
    ):
        value = getattr(options, name)
        if value not in allowed:
            raise exceptions.OptionsError(
                f"{name}: expected one of {', '.join(allowed)}, got {value!r}"
            )


def check_spool(directory: str) -> None:
    if not directory.strip():
        # else the working directory became the spool (its lock and state files there)
        raise exceptions.OptionsError("meter_spool: empty (give the spool's directory)")


def check_db(locator: str) -> None:
    """A DuckDB file's directory must exist, and the name must not be a directory: the
    writer would otherwise keep every event in the spool, retrying, with no store ever
    made (a lake is checked by its attach).
    An empty one is DuckDB's in-memory database: every event would go with the process.
    A PostgreSQL connection string without ``ducklake:postgres:`` is refused (DuckDB
    would make a file named after it, password included); every message masks passwords."""
    if not locator.strip():
        raise exceptions.OptionsError("meter_db: empty (give a file path or a ducklake: locator)")
    problem = locator_problem(locator)
    if problem is not None:
        raise exceptions.OptionsError(f"meter_db: {problem}")
    if locator.startswith(LAKE_PREFIX):
        try:  # a relative data path, a bad S3 setting: no flush would ever succeed
            settings = lake_settings()
            maintain_every_s()  # a negative one turned maintenance off unsaid
        except LakeConfigError as e:
            raise exceptions.OptionsError(f"meter_db: {e}") from e
        if settings.ingest == "staged" and not locator.startswith(POSTGRES_LAKE_PREFIX):
            raise exceptions.OptionsError(
                "meter_db: METERLINE_LAKE_INGEST=staged needs a lake whose catalog is "
                "PostgreSQL (ducklake:postgres:...)"
            )
        return
    path = Path(locator).expanduser()
    shown_path = shown(str(path))
    if not path.parent.is_dir():
        raise exceptions.OptionsError(f"meter_db: {shown(str(path.parent))} is not a directory")
    if path.is_dir():
        raise exceptions.OptionsError(
            f"meter_db: {shown_path} is a directory (name a DuckDB file in it)"
        )
    if path.exists() and not path.is_file():  # a FIFO would block the start for good
        raise exceptions.OptionsError(f"meter_db: {shown_path} is not a regular file")
    try:
        if path.stat().st_size and not looks_like_duckdb(path):  # empty: made at first flush
            raise exceptions.OptionsError(f"meter_db: {shown_path} is not a DuckDB database file")
    except FileNotFoundError:
        return  # made by the first flush
    except OSError as e:
        raise exceptions.OptionsError(f"meter_db: cannot read {shown_path}: {e.strerror}") from e


#: A day: a longer interval holds events in the spool for longer than any use of it (and
#: ``inf`` made the writer's wait raise).
MAX_FLUSH_INTERVAL_S = 86_400.0


def parse_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= MAX_FLUSH_INTERVAL_S:
        raise exceptions.OptionsError(
            f"meter_flush_interval: expected seconds greater than 0 and at most "
            f"{MAX_FLUSH_INTERVAL_S:g}, got {text!r}"
        )
    return value
