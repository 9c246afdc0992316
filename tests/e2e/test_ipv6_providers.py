"""Catalog providers on IPv6 addresses, metered and routed by the real proxy.

Before, ``parse_host_pattern`` split every pattern at its last colon: a bare ``::1`` was
read as host ``:`` port 1 (``fd00::5`` as ``fd00:`` port 5), the catalog loaded without a
word and traffic to the address passed unmetered. And a gateway route to a provider on
``[::1]:PORT`` was sent to 127.0.0.1 (the registry's canonical spelling of loopback), where
nothing listened: 502 ``Connect call failed ('127.0.0.1', PORT)``.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from meterline.fingerprint import fingerprint
from tests.support.proxy import MeterProxy
from tests.support.upstream import FakeProvider

KEY = "acme-key-for-ipv6-providers"
HI = [{"role": "user", "content": "hi"}]


def _ipv6_loopback_missing() -> str | None:
    """Why this machine cannot listen on ``::1``, or None when it can."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as e:
        return f"no IPv6 loopback here ({e})"
    return None


@pytest.fixture
def v6_provider(tmp_path: Path) -> Iterator[FakeProvider]:
    """A fake provider listening on ``::1`` only (nothing answers on 127.0.0.1)."""
    reason = _ipv6_loopback_missing()
    if reason is not None:  # a kernel or container without IPv6 (the parsing is unit-tested)
        pytest.skip(reason)
    (tmp_path / "v6").mkdir()
    with FakeProvider(tmp_path / "v6", host="::1") as upstream:
        yield upstream


def _catalog(path: Path, hosts: list[str], **extra: Any) -> Path:
    doc = {
        "version": 1,
        "providers": [{"name": "v6", "flavor": "openai", "hosts": hosts}],
        "consumers": [{"name": "acme", "keys": [{"fingerprint": fingerprint(KEY)}]}],
        **extra,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize("pattern", ["::1", "[::1]", "[::1]:{port}"])
def test_traffic_to_a_provider_on_an_ipv6_address_is_metered(
    tmp_path: Path, mitm_confdir: Path, v6_provider: FakeProvider, pattern: str
) -> None:
    """Bare ``::1`` and ``[::1]`` (any port) and ``[::1]:PORT`` all name the address."""
    port = v6_provider.ports["openai"]
    catalog = _catalog(tmp_path / "catalog.yaml", [pattern.format(port=port)])
    with MeterProxy(tmp_path / "proxy", catalog=catalog, confdir=mitm_confdir) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        try:
            body = json.dumps({"model": "gpt-4o", "messages": HI})
            headers = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
            conn.request("POST", f"http://[::1]:{port}/v1/chat/completions", body, headers)
            reply = conn.getresponse()
            reply.read()
        finally:
            conn.close()
        assert reply.status == 200
        (called,) = v6_provider.wait_for(1)
        (event,) = proxy.wait_for_events([called.request_id])  # before: no event at all
        assert (event["consumer"], event["provider"]) == ("acme", "v6")


def test_a_gateway_route_to_a_provider_on_ipv6_loopback_calls_that_address(
    tmp_path: Path, mitm_confdir: Path, v6_provider: FakeProvider
) -> None:
    """The route's call goes to ``[::1]:PORT`` as the catalog spells it, not to 127.0.0.1."""
    target = socket.socket()  # the reverse target: some other server, never called
    target.bind(("127.0.0.1", 0))
    target.listen()
    port = v6_provider.ports["openai"]
    catalog = _catalog(
        tmp_path / "catalog.yaml",
        [f"[::1]:{port}"],
        routes=[{"type": "llm/v1/chat", "path": "/chat", "provider": "v6", "model": "gpt-4o"}],
    )
    reverse = f"reverse:http://127.0.0.1:{target.getsockname()[1]}"
    proxy = MeterProxy(
        tmp_path / "gateway", catalog=catalog, confdir=mitm_confdir, mitm_args=("--mode", reverse)
    ).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        try:
            headers = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
            conn.request("POST", "/chat", json.dumps({"messages": HI}), headers)
            reply = conn.getresponse()
            reply.read()
        finally:
            conn.close()
        assert reply.status == 200  # before: 502, connect to ('127.0.0.1', port) failed
        (called,) = v6_provider.wait_for(1)
        assert called.path == "/v1/chat/completions" and called.json["model"] == "gpt-4o"
        assert called.headers["host"] == f"[::1]:{port}"
        (event,) = proxy.wait_for_events([called.request_id])
        assert event["provider"] == "v6"
    finally:
        proxy.stop()
        target.close()
