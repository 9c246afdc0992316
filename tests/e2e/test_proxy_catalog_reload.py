"""Edits to catalog.yaml reach a running proxy (real mitmdump), bad edits do not."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from meterline.catalog import CatalogError, load_catalog
from tests.conftest import KEYS, ProxyFactory
from tests.support.clients import Clients
from tests.support.proxy import MeterProxy, write_catalog
from tests.support.upstream import FakeProvider

MESSAGES = [{"role": "user", "content": "hi"}]
NEW_KEY = "sk-test-erin-added-while-running"


def _consumer_of_next_call(made: Clients, proxy: MeterProxy, upstream: FakeProvider) -> str | None:
    made.openai(NEW_KEY).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    [row] = proxy.wait_for_events([upstream.last().request_id])
    return row["consumer"]


def test_catalog_edits_are_picked_up_while_running(
    clients: Clients, start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    providers = fake_provider.catalog_providers()
    catalog = write_catalog(tmp_path / "catalog.yaml", providers, {"alice": [KEYS["alice"]]})
    proxy = start_proxy(catalog=catalog)
    made = clients.for_proxy(proxy)
    assert _consumer_of_next_call(made, proxy, fake_provider) is None

    mark = proxy.log_mark()
    write_catalog(catalog, providers, {"alice": [KEYS["alice"]], "erin": [NEW_KEY]})
    proxy.wait_for_log(r"catalog \S+ reloaded: \d+ provider\(s\), 2 consumer\(s\)", since=mark)
    assert _consumer_of_next_call(made, proxy, fake_provider) == "erin"

    # A broken edit is reported and the catalog in use stays in force.
    mark = proxy.log_mark()
    catalog.write_text("consumers: [{name: Not Valid}]\n")
    proxy.wait_for_log(r"catalog \S+ not reloaded, keeping the one in use: .+", since=mark)
    assert _consumer_of_next_call(made, proxy, fake_provider) == "erin"
    assert proxy.process is not None and proxy.process.poll() is None

    # Fixed again: picked up as well.
    mark = proxy.log_mark()
    write_catalog(catalog, providers, {"alice": [KEYS["alice"]]})
    proxy.wait_for_log(r"catalog \S+ reloaded: \d+ provider\(s\), 1 consumer\(s\)", since=mark)
    assert _consumer_of_next_call(made, proxy, fake_provider) is None


def _with_a_pricing_typo(path: Path) -> None:
    """Add a plan whose rate card billing would refuse (the proxy does not price)."""
    doc = yaml.safe_load(path.read_text())
    doc["features"] = [{"key": "tokens", "name": "Tokens", "meter": {}}]
    doc["plans"] = [
        {
            "key": "pro",
            "name": "Pro",
            "currency": "USD",
            "rate_cards": [
                {"key": "t", "name": "T", "feature": "tokens", "price": {"type": "unit"}}
            ],
        }
    ]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_a_pricing_typo_does_not_stop_a_new_key(
    clients: Clients, start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    providers = fake_provider.catalog_providers()
    catalog = write_catalog(tmp_path / "catalog.yaml", providers, {"alice": [KEYS["alice"]]})
    _with_a_pricing_typo(catalog)
    with pytest.raises(CatalogError, match=r"plans\[0\]\.rate_cards\[0\]\.price"):
        load_catalog(catalog)  # what `billing catalog check` reports
    proxy = start_proxy(catalog=catalog)
    made = clients.for_proxy(proxy)
    assert _consumer_of_next_call(made, proxy, fake_provider) is None

    mark = proxy.log_mark()
    write_catalog(catalog, providers, {"alice": [KEYS["alice"]], "erin": [NEW_KEY]})
    _with_a_pricing_typo(catalog)
    proxy.wait_for_log(r"catalog \S+ reloaded: \d+ provider\(s\), 2 consumer\(s\)", since=mark)
    assert _consumer_of_next_call(made, proxy, fake_provider) == "erin"


def test_a_reload_that_needs_request_checks_is_refused_with_streamed_requests(
    clients: Clients, start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    """``stream_large_bodies`` sends a large request upstream before the ``request``
    hook: refused at start when the catalog injects keys or sets limits, but a reload
    adding them was taken, and 4 KB calls were then served past a hard limit of 1 token
    (stored as refused, 0 tokens) and sent without their injected key."""
    providers = fake_provider.catalog_providers()
    catalog = write_catalog(tmp_path / "catalog.yaml", providers, {"alice": [KEYS["alice"]]})
    proxy = start_proxy(catalog=catalog, options={"stream_large_bodies": "1k"})
    mark = proxy.log_mark()
    write_catalog(
        catalog,
        providers,
        {"alice": [KEYS["alice"]]},
        inject={"alice": {"fake-openai": "METERLINE_TEST_INJECTED"}},
    )
    proxy.wait_for_log(
        r"catalog \S+ not reloaded, keeping the one in use: stream_large_bodies: ", since=mark
    )
    made = clients.for_proxy(proxy)
    big = [{"role": "user", "content": "x" * 4096}]
    made.openai(KEYS["alice"]).chat.completions.create(model="gpt-4o", messages=big)
    assert fake_provider.last().headers["authorization"] == f"Bearer {KEYS['alice']}"


def test_a_reload_with_a_key_written_twice_is_refused(
    clients: Clients, start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    """A second ``consumers:`` section silently replaced the first (the last key won): the
    reload was taken and alice's calls were no longer hers."""
    providers = fake_provider.catalog_providers()
    catalog = write_catalog(tmp_path / "catalog.yaml", providers, {"alice": [KEYS["alice"]]})
    proxy = start_proxy(catalog=catalog)
    made = clients.for_proxy(proxy)

    mark = proxy.log_mark()
    with catalog.open("a") as f:
        f.write("consumers: [{name: erin}]\n")
    proxy.wait_for_log(
        r"catalog \S+ not reloaded, keeping the one in use: \S+: line \d+: "
        r"duplicate key 'consumers' \(first at line \d+\)",
        since=mark,
    )
    made.openai(KEYS["alice"]).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    [row] = proxy.wait_for_events([fake_provider.last().request_id])
    assert row["consumer"] == "alice"
