"""Events survive kill -9, are never doubled on replay, and the DB stays readable."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import KEYS, ProxyFactory
from tests.support.clients import Clients
from tests.support.proxy import MeterProxy, row_usage
from tests.support.upstream import Exchange, FakeProvider

MESSAGES = [{"role": "user", "content": "hi"}]


def _traffic(made: Clients, upstream: FakeProvider, n: int) -> list[Exchange]:
    """``n`` metered calls alternating OpenAI (streamed) and Anthropic (JSON)."""
    start = len(upstream.exchanges)
    for i in range(n):
        if i % 2:
            made.anthropic(KEYS["bob"]).messages.create(
                model="claude-sonnet-4-6", max_tokens=10, messages=MESSAGES
            )
        else:
            for _ in made.openai(KEYS["alice"], tls=False).chat.completions.create(
                model="gpt-4o", messages=MESSAGES, stream=True
            ):
                pass
    return upstream.exchanges[start:]


def _spooled_lines(proxy: MeterProxy) -> int:
    return sum(p.read_bytes().count(b"\n") for p in proxy.spool.glob("*.open"))


def _wait(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_kill_9_recovery_without_doubles(
    clients: Clients, start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    proxy = start_proxy(options={"meter_flush_interval": 3600})  # nothing reaches the DB
    exchanges = _traffic(clients.for_proxy(proxy), fake_provider, 4)
    _wait(lambda: _spooled_lines(proxy) == 4)
    proxy.kill()
    assert proxy.events() == []
    [segment] = list(proxy.spool.glob("*.open"))
    saved = segment.read_bytes()

    proxy.start()  # replays the spool into DuckDB
    rows = proxy.wait_for_events([ex.request_id for ex in exchanges])
    for ex, row in zip(exchanges, rows, strict=True):
        assert ex.usage is not None and row_usage(row) == ex.usage
    _wait(lambda: not list(proxy.spool.glob("*.jsonl")))

    # A crash after the commit but before the segment was deleted: replaying it again
    # must not double anything.
    proxy.stop()
    (proxy.spool / "meterline-00000000000000000001-1-000001.jsonl").write_bytes(saved)
    proxy.start()
    _wait(lambda: not list(proxy.spool.glob("*.jsonl")))
    assert len(proxy.events()) == 4
    proxy.wait_for_events([ex.request_id for ex in exchanges])


def test_sigterm_drains_the_spool(
    clients: Clients, start_proxy: ProxyFactory, fake_provider: FakeProvider
) -> None:
    proxy = start_proxy(options={"meter_flush_interval": 3600})
    exchanges = _traffic(clients.for_proxy(proxy), fake_provider, 2)
    _wait(lambda: _spooled_lines(proxy) == 2)
    assert proxy.stop() == 0
    rows = proxy.events()
    assert sorted(r["request_id"] for r in rows) == sorted(ex.request_id for ex in exchanges)
    assert list(proxy.spool.glob("*.jsonl")) + list(proxy.spool.glob("*.open")) == []


READER = """
import select, sys, time
from meterline.store import store
db = sys.argv[1]
print("ready", flush=True)
while not select.select([sys.stdin], [], [], 0)[0]:  # until the test closes our stdin
    try:
        with store(db, read_only=True, wait_s=60) as con:
            n = con.execute("SELECT count(*) FROM usage_events").fetchone()[0]
        print(n, flush=True)
    except Exception as e:
        if "no such database" not in str(e) and "usage_events" not in str(e):
            raise
    time.sleep(0.01)
"""


def test_separate_reader_while_proxy_writes(
    clients: Clients, start_proxy: ProxyFactory, fake_provider: FakeProvider
) -> None:
    """A separate process reads the file again and again while the proxy writes to it:
    it sees the table grow (the writer lets go when asked, and gets the file back)."""
    proxy = start_proxy(options={"meter_flush_interval": 0.05})
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(proxy.db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert reader.stdin is not None and reader.stdout is not None
    assert reader.stdout.readline().strip() == "ready"  # imports done: time it no more
    counts: list[int] = []
    lines = threading.Thread(
        target=lambda: counts.extend(int(ln) for ln in reader.stdout or ()), daemon=True
    )
    lines.start()
    made = clients.for_proxy(proxy)
    exchanges: list[Exchange] = []
    started = time.monotonic()
    # at least 2.5 s of traffic, and on a slow machine until the reader saw growth (<= 60 s)
    while time.monotonic() - started < 2.5 or (
        len(set(counts)) < 2 and time.monotonic() - started < 60
    ):
        exchanges += _traffic(made, fake_provider, 2)
        time.sleep(0.05)
    reader.stdin.close()
    lines.join(timeout=60)
    err = reader.stderr.read() if reader.stderr else ""
    assert reader.wait(timeout=60) == 0, err
    reader.stdout.close()
    if reader.stderr:
        reader.stderr.close()
    assert len(set(counts)) >= 2, counts  # it saw the table grow while the proxy wrote
    assert counts == sorted(counts)
    rows = proxy.wait_for_events([ex.request_id for ex in exchanges])
    assert len(rows) == len(exchanges) == len(proxy.events())


def test_a_store_file_made_empty_in_advance_becomes_the_store(
    start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    """``touch meterline.duckdb`` (a file for a container's bind mount): before, DuckDB
    refused it on every flush and every event stayed in the spool. Now it is filled in
    place: the same inode (a bind-mounted file cannot be replaced), made 0600."""
    db = tmp_path / "mounted.duckdb"
    db.touch(mode=0o644)
    db.chmod(0o644)
    inode = db.stat().st_ino
    proxy = start_proxy(options={"meter_db": str(db)})
    proxy.db = db
    made = Clients(proxy, fake_provider)
    try:
        exchanges = _traffic(made, fake_provider, 4)
    finally:
        made.close()
    proxy.wait_for_events([e.request_id for e in exchanges], timeout=15)
    assert "not a valid DuckDB" not in proxy.log_text()
    assert db.stat().st_ino == inode
    assert db.stat().st_mode & 0o777 == 0o600
