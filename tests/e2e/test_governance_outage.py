"""``meter_governance_failure=deny`` holds during a store outage, not only at start.

A fleet shares limits through its lake; while the lake's PostgreSQL is down, a proxy
sees none of the others' calls. Before, a running proxy kept its last figures whatever
the policy: over an outage each of three proxies (the ``deny`` one too) admitted what
the limit had left on its own, and a 5M cap ended at 12M. Now, once reads have failed
for three refresh intervals (or a read has hung ten seconds more: a server that stopped
answering fails nothing), ``deny`` refuses governed calls (503) until a read succeeds;
``allow`` keeps counting on the last figures (availability first).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import KEYS, ProxyFactory
from tests.e2e.test_governance import ALICE, chat
from tests.support.clients import openai_client
from tests.support.governance import governed_catalog
from tests.support.postgres import (
    _bin_dir,
    create_database,
    postgres_server,
    server_pids,
    signal_each,
)
from tests.support.proxy import MeterProxy
from tests.support.upstream import FakeProvider

DATABASE = "outage"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with postgres_server() as conninfo:
        yield conninfo


def _psql(conninfo: str, sql: str) -> None:
    subprocess.run(
        [str(_bin_dir() / "psql"), conninfo, "-q", "-c", sql], check=True, capture_output=True
    )


def _outage(conninfo: str, down: bool) -> None:
    """The lake's database refuses connections (and loses those it had), or takes them again."""
    _psql(conninfo, f'ALTER DATABASE "{DATABASE}" ALLOW_CONNECTIONS {str(not down).lower()}')
    if down:
        _psql(
            conninfo,
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{DATABASE}'",
        )


def _deny_proxy(
    server: str, database: str, limit: int, tmp_path: Path, start: ProxyFactory, fake: FakeProvider
) -> MeterProxy:
    """A proxy with ``deny`` on a lake of its own, re-reading it every 0.5 s."""
    lake = f"ducklake:postgres:{create_database(server, database)}"
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake,
        ALICE,
        entitlements=[{"feature": "gpt-out", "limit": limit}],
    )
    return start(
        catalog=catalog,
        options={
            "meter_db": lake,
            "meter_governance_failure": "deny",
            "meter_governance_refresh": "0.5",
        },
        env={"METERLINE_LAKE_DATA": str(tmp_path / "lake-data")},
    )


def _until_refused(client: openai.OpenAI, why: str) -> None:
    """Calls until ``deny`` refuses one with its 503 (within three refresh intervals of
    the last read, or ten seconds more for a read that hangs, calls still pass)."""
    deadline = time.monotonic() + 40
    while True:
        try:
            chat(client, 10)
        except openai.InternalServerError as e:  # before: admitted on old figures
            assert e.status_code == 503 and "cannot be checked" in e.message
            return
        assert time.monotonic() < deadline, f"deny never refused {why}"
        time.sleep(0.2)


def _until_admitted(client: openai.OpenAI) -> None:
    """Calls until one passes again: a read succeeded, limits checked on its figures."""
    deadline = time.monotonic() + 60
    while True:
        try:
            chat(client, 10)
            return
        except openai.InternalServerError:
            assert time.monotonic() < deadline, "calls stayed refused after the outage"
            time.sleep(0.5)


def test_deny_refuses_once_reads_have_failed_for_a_while(
    server: str, tmp_path: Path, start_proxy: ProxyFactory, fake_provider: FakeProvider
) -> None:
    proxy = _deny_proxy(server, DATABASE, 300, tmp_path, start_proxy, fake_provider)
    with openai_client(proxy, fake_provider, KEYS["alice"]) as client:
        chat(client, 100)  # the store read: 100 of 300 used
        proxy.wait_for_log(r"usage limits enforced from the store", timeout=60)
        _outage(server, down=True)
        try:
            mark = proxy.log_mark()
            line = proxy.wait_for_log(r"cannot read usage for limits.*", timeout=30, since=mark)
            # Why, not the ROLLBACK that failed after it (before: 'Failed to execute
            # query "ROLLBACK": ' and nothing more).
            assert not line[0].rstrip().endswith('"ROLLBACK":'), line[0]
            _until_refused(client, "during the outage")
        finally:
            _outage(server, down=False)
        _until_admitted(client)


def test_deny_refuses_while_the_store_hangs(
    server: str, tmp_path: Path, start_proxy: ProxyFactory, fake_provider: FakeProvider
) -> None:
    """The server stops answering (SIGSTOP: a hung host, a network black hole): reads
    neither end nor fail. Before, ``deny`` admitted every call meanwhile (77 of 77 in 20
    s), with nothing logged."""
    proxy = _deny_proxy(server, DATABASE + "_hang", 10_000, tmp_path, start_proxy, fake_provider)
    with openai_client(proxy, fake_provider, KEYS["alice"]) as client:
        chat(client, 10)
        proxy.wait_for_log(r"usage limits enforced from the store", timeout=60)
        pids = server_pids(server)
        signal_each(pids, signal.SIGSTOP)
        try:
            _until_refused(client, "while the store hung")
        finally:
            signal_each(pids, signal.SIGCONT)
        _until_admitted(client)
