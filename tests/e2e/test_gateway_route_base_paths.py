"""A gateway route calls a built-in provider under that provider's own base path.

The real proxy in reverse mode (``mitmdump --mode reverse:... -s addons/meter.py``) in
front of a fake provider that the catalog names like the built-in (it adds its host to
the built-in's). Before, every OpenAI-flavor route went to ``/v1/chat/completions``,
where Groq (``/openai/v1``), OpenRouter (``/api/v1``), Fireworks (``/inference/v1``) and
Azure OpenAI's v1 API (``/openai/v1``) have no endpoint: each such call was a 404.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest
import yaml

from tests.support.proxy import MeterProxy
from tests.support.upstream import FakeProvider


@pytest.mark.parametrize(
    "provider,route_type,expected",
    [
        ("groq", "llm/v1/chat", "/openai/v1/chat/completions"),
        ("openrouter", "llm/v1/chat", "/api/v1/chat/completions"),
        ("fireworks", "llm/v1/embeddings", "/inference/v1/embeddings"),
        ("azure-openai", "llm/v1/chat", "/openai/v1/chat/completions"),
        ("openai", "llm/v1/chat", "/v1/chat/completions"),  # unchanged
    ],
)
def test_a_route_reaches_the_providers_own_endpoint(
    tmp_path: Path, mitm_confdir: Path, provider: str, route_type: str, expected: str
) -> None:
    with FakeProvider(tmp_path) as upstream:
        port = upstream.ports["openai"]
        catalog = tmp_path / "catalog.yaml"
        doc = {
            "version": 1,
            "providers": [{"name": provider, "flavor": "openai", "hosts": [f"127.0.0.1:{port}"]}],
            "routes": [{"path": "/ai", "type": route_type, "provider": provider, "model": "m"}],
        }
        catalog.write_text(yaml.safe_dump(doc, sort_keys=False))
        with MeterProxy(
            tmp_path / "gateway",
            catalog=catalog,
            confdir=mitm_confdir,
            mitm_args=("--mode", f"reverse:{upstream.base_url('openai')}"),
        ) as proxy:
            body = {"messages": [{"role": "user", "content": "hi"}], "input": "hi"}
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
            try:
                headers = {"content-type": "application/json", "authorization": "Bearer sk-t"}
                conn.request("POST", "/ai", json.dumps(body), headers)
                assert conn.getresponse().status == 200
            finally:
                conn.close()
            (called,) = upstream.wait_for(1)
            assert called.path == expected
            assert called.json["model"] == "m"
            (event,) = proxy.wait_for_events([called.request_id])
            assert event["provider"] == provider
