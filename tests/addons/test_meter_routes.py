"""Gateway routes in the addon's hooks (reverse mode), driven with taddons/tflow."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mitmproxy import exceptions, http
from mitmproxy.proxy.mode_specs import ProxyMode

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # ldap3 via mitmproxy.addons
    from mitmproxy.test import taddons, tflow

from addons.meter import Meter
from meterline.fingerprint import fingerprint

KEY = "acme-secret-key"


@pytest.fixture
def meter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Meter]:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        yaml.safe_dump(
            {
                "consumers": [
                    {
                        "name": "acme-corp",
                        "keys": [{"fingerprint": fingerprint(KEY)}],
                        "inject": {"openai": "UNIT_OPENAI_KEY"},
                    }
                ],
                "routes": [{"path": "/chat", "provider": "openai", "model": "gpt-4o"}],
            }
        )
    )
    monkeypatch.setenv("UNIT_OPENAI_KEY", "sk-real-provider")
    m = Meter()
    with taddons.context(m) as tctx:
        tctx.configure(
            m,
            meter_catalog=str(catalog),
            meter_db=str(tmp_path / "events.duckdb"),
            meter_spool=str(tmp_path / "spool"),
            meter_flush_interval="3600",
        )
        yield m
        m.done()


def _flow(mode: str, url: str, body: dict[str, Any], method: str = "POST") -> http.HTTPFlow:
    f = tflow.tflow()
    f.client_conn.proxy_mode = ProxyMode.parse(mode)
    f.request = http.Request.make(
        method, url, json.dumps(body).encode(), {"content-type": "application/json", "apikey": KEY}
    )
    f.response = None
    return f


def test_gateway_path_is_routed_with_the_model_pinned_and_the_key_injected(meter: Meter) -> None:
    f = _flow(
        "reverse:http://127.0.0.1:9",
        "http://127.0.0.1:9/chat",
        {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}]},
    )
    meter.requestheaders(f)
    meter.request(f)
    assert f.response is None
    # the reverse target (127.0.0.1:9) is not OpenAI's: the call goes to OpenAI's own host
    assert (f.request.scheme, f.request.host, f.request.port) == ("https", "api.openai.com", 443)
    assert f.request.path == "/v1/chat/completions"
    assert json.loads(f.request.content or b"")["model"] == "gpt-4o"
    assert f.request.headers["authorization"] == "Bearer sk-real-provider"
    assert "apikey" not in f.request.headers
    st = meter._active[f.id]
    assert st.provider.name == "openai"
    assert st.identity.consumer is not None and st.identity.consumer.name == "acme-corp"


@pytest.mark.parametrize(
    "mode,url,method",
    [
        ("regular", "https://example.com/chat", "POST"),  # a forward proxy never routes
        ("reverse:http://127.0.0.1:9", "http://127.0.0.1:9/other", "POST"),
        ("reverse:http://127.0.0.1:9", "http://127.0.0.1:9/chat", "GET"),
    ],
)
def test_other_flows_are_not_routed(meter: Meter, mode: str, url: str, method: str) -> None:
    f = _flow(mode, url, {"messages": []}, method)
    path = f.request.path
    meter.requestheaders(f)
    meter.request(f)
    assert f.request.path == path
    assert meter._active == {}


def test_a_route_to_an_unknown_provider_stops_the_catalog_loading(
    meter: Meter, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nroutes: [{path: /chat, provider: nosuch}]\n")
    with taddons.context(meter) as tctx, pytest.raises(exceptions.OptionsError) as e:
        tctx.configure(meter, meter_catalog=str(bad))
    assert "routes[0].provider: unknown provider 'nosuch'" in str(e.value)


def test_a_route_to_the_reverse_targets_provider_keeps_the_target(meter: Meter) -> None:
    f = _flow(
        "reverse:https://api.openai.com",
        "https://api.openai.com/chat",
        {"messages": [{"role": "user", "content": "hi"}]},
    )
    meter.requestheaders(f)
    meter.request(f)
    assert f.response is None
    assert (f.request.host, f.request.port) == ("api.openai.com", 443)
    assert f.request.headers["authorization"] == "Bearer sk-real-provider"
