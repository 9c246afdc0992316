"""Full and immutable disks under a running proxy: traffic passes, events wait, nothing
leaks, and everything is stored once the disk is usable again."""

from __future__ import annotations

import re
from pathlib import Path

import httpx2
import openai

from tests.conftest import KEYS, ProxyFactory
from tests.faults.disks import fill, immutable, tmpfs
from tests.faults.load import CALLS, tally, wait_until
from tests.support.governance import governed_catalog
from tests.support.proxy import MeterProxy
from tests.support.upstream import FakeProvider

_SPOOL_ENOSPC = r"spool \S+: cannot write to the spool: ENOSPC"
KINDS = ("openai-json", "openai-sse", "anthropic-json", "anthropic-sse")


def _calls(proxy: MeterProxy, upstream: FakeProvider, n: int) -> list[str]:
    """``n`` calls through the proxy, every one of which must be answered."""
    ids = []
    with httpx2.Client(proxy=proxy.url, timeout=30) as client:
        for i in range(n):
            ids.append(CALLS[KINDS[i % len(KINDS)]](client, upstream))
    return ids


def _lines(proxy: MeterProxy, pattern: str) -> int:
    return len(re.findall(pattern, proxy.log_text()))


def test_full_spool_disk_holds_events_and_writes_them_later(
    start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "disk", "1m") as disk:
        proxy = start_proxy(options={"meter_spool": str(disk / "spool")})
        filler = fill(disk)
        answered = _calls(proxy, fake_provider, 100)
        wait_until(lambda: _lines(proxy, _SPOOL_ENOSPC) >= 1, 30, "the ENOSPC line")
        assert proxy.events("list_contains(?, request_id)", [answered]) == []
        filler.unlink()  # space is back: the held events are written within a flush
        proxy.wait_for_events(answered, timeout=60)
        result = tally(proxy, answered)
        log = proxy.log_text()
        print(result.line("full spool disk", enospc_lines=_lines(proxy, _SPOOL_ENOSPC)))
        assert result.lost == [] and result.doubled == []
        assert _lines(proxy, _SPOOL_ENOSPC) == 1  # logged once, with its cause
        assert "Traceback" not in log
        assert re.search(r"spool \S+ writable again .*0 dropped", log)
        proxy.stop()


def test_full_store_disk_names_enospc_and_recovers(
    start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "disk", "8m") as disk:
        proxy = start_proxy(options={"meter_db": str(disk / "events.duckdb")})
        proxy.db = disk / "events.duckdb"
        first = _calls(proxy, fake_provider, 4)
        proxy.wait_for_events(first)
        filler = fill(disk)
        answered = _calls(proxy, fake_provider, 40)
        wait_until(lambda: _lines(proxy, r"cannot write .*ENOSPC") >= 1, 60, "the ENOSPC line")
        log = proxy.log_text()
        assert "no transaction is active" not in log
        filler.unlink()
        proxy.wait_for_events(answered, timeout=30)
        result = tally(proxy, first + answered)
        print(result.line("full store disk", store_errors=_lines(proxy, r"cannot write")))
        assert result.lost == [] and result.doubled == []
        assert _lines(proxy, r"cannot write \d+ spool segment") == 1  # once, not per retry
        assert "store " in proxy.log_text() and "writable again" in proxy.log_text()
        proxy.stop()


def test_immutable_spool_directory_leaks_nothing_and_recovers(
    start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    """Sealing fails (EPERM), then opening a segment fails: no descriptor is reused, no
    event JSON reaches a client, the writer keeps going once the directory is usable."""
    spool = tmp_path / "spool"
    spool.mkdir()
    foreign = {"notes.txt": b"mine", "old.jsonl": b'{"event_id":"not yours"}\n', "x.open": b"x"}
    for name, data in foreign.items():
        (spool / name).write_bytes(data)
    proxy = start_proxy(options={"meter_spool": str(spool), "meter_flush_interval": 0.5})
    before = _calls(proxy, fake_provider, 4)
    proxy.wait_for_events(before)
    before += _calls(proxy, fake_provider, 1)  # most likely a segment is open: its seal fails
    leaked = 0
    with immutable(spool):
        answered = []
        with httpx2.Client(proxy=proxy.url, timeout=30) as client:
            for i in range(40):
                r = client.post(
                    fake_provider.base_url("openai") + "/v1/chat/completions",
                    json={"model": "gpt-4o", "messages": [{"role": "user", "content": str(i)}]},
                    headers={"authorization": "Bearer sk-test-alice-0000000000000001"},
                )
                leaked += b"event_id" in r.content or b"key_fingerprint" in r.content
                answered.append(r.headers["x-request-id"])
        wait_until(lambda: _lines(proxy, r"spool \S+: .*EPERM") >= 1, 30, "the EPERM line")
    after = _calls(proxy, fake_provider, 4)
    proxy.wait_for_events(answered + after, timeout=60)
    result = tally(proxy, before + answered + after)
    errors = _lines(proxy, r"spool \S+: .*EPERM.*holding")
    print(result.line("immutable spool dir", leaked=leaked, eperm_errors=errors))
    assert result.lost == [] and result.doubled == [] and leaked == 0
    assert "Traceback" not in proxy.log_text()
    for name, data in foreign.items():  # the spool touches only its own files
        assert (spool / name).read_bytes() == data
    proxy.stop()


def test_a_restart_with_the_store_disk_full_still_counts_the_spooled_usage(
    start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    """A hard limit of 120 output tokens, 40 per call: 40 stored, then the store's disk
    fills and 80 more wait in the spool; kill -9, restart. The restarted proxy cannot
    flush them (the disk is still full) but reads the store: it must count them from the
    spool. Before, it forgot them: 200, 200, 429 after the restart, 200 stored against
    the limit of 120."""
    limit, per_call = 120, 40
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        {"alice": KEYS["alice"]},
        entitlements=[{"feature": "gpt-out", "limit": limit}],
    )

    def call(proxy: MeterProxy) -> int:
        client = openai.OpenAI(
            base_url=fake_provider.base_url("openai") + "/v1",
            api_key=KEYS["alice"],
            max_retries=0,
            http_client=openai.DefaultHttpxClient(proxy=proxy.url),
        )
        try:
            client.chat.completions.create(
                model="gpt-4o",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=per_call,
                extra_headers={"x-fake": f"output={per_call}"},
            )
            return 200
        except openai.APIStatusError as e:
            return e.status_code
        finally:
            client.close()

    with tmpfs(tmp_path / "disk", "8m") as disk:
        proxy = start_proxy(
            catalog=catalog,
            options={"meter_db": str(disk / "events.duckdb"), "meter_flush_interval": 0.1,
                     "meter_governance_refresh": "0.3"},
        )  # fmt: skip
        proxy.db = disk / "events.duckdb"
        assert call(proxy) == 200
        wait_until(lambda: len(proxy.events("reason IS NULL")) == 1, 10, "the first event")
        filler = fill(disk)
        assert [call(proxy) for _ in range(3)] == [200, 200, 429]
        proxy.kill()
        proxy.start()  # the spool's 80 tokens cannot reach the full store
        after = [call(proxy) for _ in range(3)]
        filler.unlink()
        wait_until(lambda: len(proxy.events("reason IS NULL")) == 3, 30, "the spooled events")
        used = sum(r["output_tokens"] for r in proxy.events("reason IS NULL"))
        print(f"after the restart: {after}; stored {used} output tokens, limit {limit}")
        assert after == [429, 429, 429]
        assert used == limit
        proxy.stop()


def test_a_store_created_on_a_full_disk_is_made_once_space_is_back(
    start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    """DuckDB creates the store file, then fails to write its headers (ENOSPC): a 0-byte
    file is left. Before, DuckDB refused it for good ("not a valid DuckDB database file")
    once space was back, across restarts too: every event stayed in the spool. The empty
    file is a store not yet created: the writer makes it (0600) when it can."""
    with tmpfs(tmp_path / "disk", "2m") as disk:
        db = disk / "events.duckdb"
        filler = fill(disk)
        proxy = start_proxy(options={"meter_db": str(db), "meter_flush_interval": 0.2})
        proxy.db = db
        answered = _calls(proxy, fake_provider, 5)
        wait_until(lambda: _lines(proxy, r"cannot write .*ENOSPC") >= 1, 30, "the ENOSPC line")
        assert db.stat().st_size == 0  # the fault as it happens: created, no headers
        filler.unlink()
        answered += _calls(proxy, fake_provider, 5)
        proxy.wait_for_events(answered, timeout=30)
        result = tally(proxy, answered)
        print(result.line("store created on a full disk"))
        assert result.lost == [] and result.doubled == []
        assert db.stat().st_mode & 0o777 == 0o600
        assert "writable again" in proxy.log_text()
        proxy.stop()
        proxy.start()  # and it stays a store
        more = _calls(proxy, fake_provider, 2)
        proxy.wait_for_events(more, timeout=30)
        assert tally(proxy, answered + more).lost == []
        proxy.stop()
