"""Gateway routes send a call to the route's provider, never to another host with its key.

The real proxy in reverse mode (``mitmdump --mode reverse:... -s addons/meter.py``) in
front of fake providers. Before, a route set the provider to meter and inject for
without looking at where the reverse mode forwards: a ``/claude`` route on a gateway in
front of OpenAI sent the Anthropic key to OpenAI, and a route to ``openai`` on a gateway
in front of any other server sent that server the OpenAI key.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from meterline.fingerprint import fingerprint
from tests.support.proxy import MeterProxy
from tests.support.upstream import FakeProvider

GATEWAY_KEY = "acme-gateway-key"
ANTHROPIC_SECRET = "sk-ant-provider-secret-for-routes"
OPENAI_SECRET = "sk-openai-provider-secret-for-routes"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def target(tmp_path: Path) -> Iterator[FakeProvider]:
    """The server the gateway's reverse mode forwards to."""
    (tmp_path / "target").mkdir()
    with FakeProvider(tmp_path / "target") as upstream:
        yield upstream


@pytest.fixture
def home(tmp_path: Path) -> Iterator[FakeProvider]:
    """The route's provider, on a host of its own."""
    (tmp_path / "home").mkdir()
    with FakeProvider(tmp_path / "home") as upstream:
        yield upstream


def _provider(name: str, flavor: str, *ports: int) -> dict[str, Any]:
    return {"name": name, "flavor": flavor, "hosts": [f"127.0.0.1:{port}" for port in ports]}


def _catalog(
    path: Path, providers: list[dict[str, Any]], inject: dict[str, str], *routes: dict[str, Any]
) -> Path:
    consumer = {"name": "acme", "keys": [{"fingerprint": fingerprint(GATEWAY_KEY)}]}
    doc = {
        "version": 1,
        "providers": providers,
        "consumers": [{**consumer, "inject": inject}],
        "routes": [{"type": "llm/v1/chat", **route} for route in routes],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _gateway(tmp_path: Path, confdir: Path, catalog: Path, reverse: str) -> MeterProxy:
    return MeterProxy(
        tmp_path / "gateway",
        catalog=catalog,
        confdir=confdir,
        options={"meter_unknown_keys": "reject"},
        env={"ROUTES_ANTHROPIC_KEY": ANTHROPIC_SECRET, "ROUTES_OPENAI_KEY": OPENAI_SECRET},
        mitm_args=("--mode", f"reverse:{reverse}"),
    ).start()


def _post(proxy: MeterProxy, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    """POST with the path sent exactly as given (no client-side normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        headers = {"content-type": "application/json", "apikey": GATEWAY_KEY}
        conn.request("POST", path, json.dumps(body), headers)
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        conn.close()


def test_a_route_to_another_provider_goes_to_that_providers_host(
    tmp_path: Path, mitm_confdir: Path, target: FakeProvider, home: FakeProvider
) -> None:
    """(a) A ``/claude`` route on a gateway in front of OpenAI calls Anthropic's host."""
    catalog = _catalog(
        tmp_path / "catalog.yaml",
        [
            _provider("fake-openai", "openai", target.ports["openai"]),
            _provider("fake-anthropic", "anthropic", home.ports["anthropic"]),
        ],
        {"fake-anthropic": "ROUTES_ANTHROPIC_KEY", "fake-openai": "ROUTES_OPENAI_KEY"},
        {"path": "/claude", "provider": "fake-anthropic", "model": "claude-x"},
    )
    proxy = _gateway(tmp_path, mitm_confdir, catalog, target.base_url("openai"))
    try:
        status, _ = _post(proxy, "/claude", {"max_tokens": 10, "messages": HI})
        assert status == 200
        (called,) = home.wait_for(1)
        assert called.path == "/v1/messages" and called.json["model"] == "claude-x"
        assert called.headers["x-api-key"] == ANTHROPIC_SECRET
        assert called.headers["host"] == f"127.0.0.1:{home.ports['anthropic']}"
        assert target.exchanges == []  # before: the Anthropic key went to the OpenAI host
        (event,) = proxy.wait_for_events([called.request_id])
        assert (event["consumer"], event["provider"]) == ("acme", "fake-anthropic")
    finally:
        proxy.stop()


def test_a_route_on_a_gateway_in_front_of_another_server_never_gives_it_the_key(
    tmp_path: Path, mitm_confdir: Path, target: FakeProvider, home: FakeProvider
) -> None:
    """(b) The reverse target is no provider at all: it gets nothing, the provider the call."""
    catalog = _catalog(
        tmp_path / "catalog.yaml",
        [{"name": "fo", "flavor": "openai", "hosts": [f"localhost:{home.ports['openai']}"]}],
        {"fo": "ROUTES_OPENAI_KEY"},
        {"path": "/chat", "provider": "fo", "model": "gpt-4o"},
    )
    proxy = _gateway(tmp_path, mitm_confdir, catalog, target.base_url("openai"))
    try:
        status, _ = _post(proxy, "/chat", {"messages": HI})
        assert status == 200
        (called,) = home.wait_for(1)
        assert called.path == "/v1/chat/completions"
        assert called.headers["authorization"] == f"Bearer {OPENAI_SECRET}"
        assert target.exchanges == []  # before: it received Authorization: Bearer <secret>
        (event,) = proxy.wait_for_events([called.request_id])
        assert event["provider"] == "fo"
    finally:
        proxy.stop()


def test_a_route_to_a_provider_with_no_one_host_is_refused_off_its_host(
    tmp_path: Path, mitm_confdir: Path, target: FakeProvider, home: FakeProvider
) -> None:
    """A provider with two hosts (or a wildcard) has no host to send to: refused, 502 in
    its own error shape, nothing forwarded anywhere; the proxy warned at start."""
    anthropic = _provider(
        "fake-anthropic", "anthropic", home.ports["anthropic"], home.tls_ports["anthropic"]
    )
    catalog = _catalog(
        tmp_path / "catalog.yaml",
        [anthropic],
        {"fake-anthropic": "ROUTES_ANTHROPIC_KEY"},
        {"path": "/claude", "provider": "fake-anthropic", "model": "claude-x"},
    )
    proxy = _gateway(tmp_path, mitm_confdir, catalog, target.base_url("openai"))
    try:
        status, body = _post(proxy, "/claude", {"max_tokens": 10, "messages": HI})
        assert status == 502
        assert "gateway route /claude: fake-anthropic has no one host to call" in proxy.log_text()
        assert body["type"] == "error" and body["error"]["type"] == "api_error"
        assert "gateway route /claude calls fake-anthropic" in body["error"]["message"]
        assert target.exchanges == [] and home.exchanges == []
    finally:
        proxy.stop()


def test_the_reverse_target_of_the_routes_provider_is_kept(
    tmp_path: Path, mitm_confdir: Path, target: FakeProvider
) -> None:
    """A route to the provider the gateway fronts calls it there (the walkthrough's set-up),
    whatever other hosts the provider has."""
    openai = _provider("fake-openai", "openai", target.ports["openai"], target.tls_ports["openai"])
    catalog = _catalog(
        tmp_path / "catalog.yaml",
        [openai],
        {"fake-openai": "ROUTES_OPENAI_KEY"},
        {"path": "/chat", "provider": "fake-openai", "model": "gpt-4o"},
    )
    proxy = _gateway(tmp_path, mitm_confdir, catalog, target.base_url("openai"))
    try:
        status, _ = _post(proxy, "/chat", {"messages": HI})
        assert status == 200
        (called,) = target.wait_for(1)
        assert called.headers["authorization"] == f"Bearer {OPENAI_SECRET}"
    finally:
        proxy.stop()


def test_a_route_matches_every_spelling_of_its_path(
    tmp_path: Path, mitm_confdir: Path, target: FakeProvider
) -> None:
    """Routes match on the path as the upstream resolves it, as provider paths do: before,
    ``//v1/chat/completions`` reached the provider with the client's model (the pin
    bypassed), and a route spelt ``/ch%61t`` was never routed (the gateway key went on)."""
    spelt = ["/ch%61t", "//talk", "/x/../speak", "/ask/."]
    catalog = _catalog(
        tmp_path / "catalog.yaml",
        [_provider("fo", "openai", target.ports["openai"])],
        {"fo": "ROUTES_OPENAI_KEY"},
        *({"path": path, "provider": "fo", "model": "cheap-model"}
          for path in ["/v1/chat/completions", *spelt]),
    )  # fmt: skip
    proxy = _gateway(tmp_path, mitm_confdir, catalog, target.base_url("openai"))
    requests = [
        "//v1/chat/completions",
        "/v1/chat/complet%69ons",
        "/v1/./chat/completions/",
        "/chat",
        "/talk",
        "/speak",
        "/ask",
    ]
    try:
        for i, path in enumerate(requests, 1):
            status, _ = _post(proxy, path, {"model": "expensive-model", "messages": HI})
            assert status == 200, path
            called = target.wait_for(i)[-1]
            assert called.path == "/v1/chat/completions", path
            assert called.json["model"] == "cheap-model", path
            assert called.headers["authorization"] == f"Bearer {OPENAI_SECRET}", path
    finally:
        proxy.stop()
