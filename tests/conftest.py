"""Shared fixtures: a fake LLM provider and the real proxy (``mitmdump -s addons/meter.py``).

Fixtures (session-scoped unless noted; all started lazily, only by tests that use them):

``fake_provider``
    :class:`tests.support.upstream.FakeProvider` on 127.0.0.1: OpenAI, Anthropic and
    Gemini APIs, one plain and one TLS port per flavor; records every exchange.
``test_catalog``
    A catalog that names the fake provider's ports (providers ``fake-openai``,
    ``fake-anthropic``, ``fake-gemini``) and the consumers of :data:`KEYS`: ``alice``,
    ``bob``; ``carol`` presents a gateway key and gets provider keys injected from the
    :data:`INJECT_ENV` variables; ``dave`` has injection configured from an unset variable.
``meter_proxy``
    A running proxy on that catalog (unknown keys recorded, include_usage on, flush every
    0.1 s, ``ssl_insecure`` for the self-signed upstream). Shared: find your own rows
    with ``meter_proxy.wait_for_events([exchange.request_id, ...])``.
``start_proxy`` (function scope)
    Factory for a dedicated proxy: ``start_proxy(options={...}, env={...}, catalog=path)``;
    stopped (SIGTERM) at teardown. Each gets its own DuckDB file and spool in tmp_path.
``clients`` (function scope)
    :class:`tests.support.clients.Clients` for ``meter_proxy`` (``clients.openai(key)``,
    ``clients.anthropic(key)``, ``clients.raw(http2=True)``; ``clients.for_proxy(p)``
    for another proxy), all closed at teardown. Also resets the fake provider's record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from tests.support.clients import Clients
from tests.support.proxy import MeterProxy, write_catalog
from tests.support.upstream import FakeProvider

# Property tests draw the same examples on every run and keep no example database: the
# suite's result never depends on luck or on what an earlier run found (issue 7).
settings.register_profile("meterline", derandomize=True, database=None)
settings.load_profile("meterline")

KEYS = {
    "alice": "sk-test-alice-0000000000000001",
    "bob": "sk-ant-test-bob-00000000000002",
    "carol": "gw-carol-gateway-key-000000003",
    "dave": "gw-dave-gateway-key-0000000004",
}
"""Raw test keys by consumer; the catalog holds only their fingerprints."""

UNKNOWN_KEY = "sk-not-in-the-catalog-999999999"

INJECT_ENV = {
    "fake-openai": "METERLINE_TEST_OPENAI_KEY",
    "fake-anthropic": "METERLINE_TEST_ANTHROPIC_KEY",
    "fake-gemini": "METERLINE_TEST_GEMINI_KEY",
}
PROVIDER_KEYS = {
    "METERLINE_TEST_OPENAI_KEY": "sk-real-openai-provider-key",
    "METERLINE_TEST_ANTHROPIC_KEY": "sk-ant-real-provider-key",
    "METERLINE_TEST_GEMINI_KEY": "AIza-real-gemini-provider-key",
}
"""What the proxy injects for ``carol`` (passed to the proxy's environment only)."""


@pytest.fixture(scope="session")
def fake_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeProvider]:
    with FakeProvider(tmp_path_factory.mktemp("upstream")) as upstream:
        yield upstream


@pytest.fixture(scope="session")
def mitm_confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mitmproxy confdir (and so one CA) for every proxy of the session."""
    return tmp_path_factory.mktemp("mitm-confdir")


@pytest.fixture(scope="session")
def test_catalog(tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeProvider) -> Path:
    return write_catalog(
        tmp_path_factory.mktemp("catalog") / "catalog.yaml",
        fake_provider.catalog_providers(),
        consumers={name: [key] for name, key in KEYS.items()},
        inject={
            "carol": INJECT_ENV,
            "dave": {"fake-openai": "METERLINE_TEST_UNSET_VARIABLE"},
        },
    )


ProxyFactory = Callable[..., MeterProxy]


def new_proxy(
    workdir: Path,
    confdir: Path,
    catalog: Path,
    options: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> MeterProxy:
    return MeterProxy(
        workdir,
        catalog=catalog,
        confdir=confdir,
        options={"ssl_insecure": True, **(options or {})},
        env={**PROVIDER_KEYS, **(env or {})},
    )


@pytest.fixture(scope="session")
def meter_proxy(
    tmp_path_factory: pytest.TempPathFactory, mitm_confdir: Path, test_catalog: Path
) -> Iterator[MeterProxy]:
    proxy = new_proxy(tmp_path_factory.mktemp("proxy"), mitm_confdir, test_catalog).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def start_proxy(tmp_path: Path, mitm_confdir: Path, test_catalog: Path) -> Iterator[ProxyFactory]:
    started: list[MeterProxy] = []

    def start(
        *,
        options: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        catalog: Path | None = None,
        name: str = "proxy",
    ) -> MeterProxy:
        proxy = new_proxy(
            tmp_path / f"{name}-{len(started)}", mitm_confdir, catalog or test_catalog, options, env
        )
        started.append(proxy)
        return proxy.start()

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def clients(meter_proxy: MeterProxy, fake_provider: FakeProvider) -> Iterator[Clients]:
    fake_provider.reset()
    made = Clients(meter_proxy, fake_provider)
    yield made
    made.close()
