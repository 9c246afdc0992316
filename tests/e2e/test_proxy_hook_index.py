"""The meter's hook index in a real mitmdump: another script's addon still sees every hook.

The meter replaces mitmproxy's hook dispatch with an index (``meter_fast_dispatch``,
on by default; ``addons/metering/dispatch.py``). A second ``-s`` script beside the meter
records the hooks it is handed and which dispatch handed them; it must see each hook of
each call once, in order, with the index and without it, and the calls are metered both
ways.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import pytest

from tests.conftest import KEYS
from tests.support.proxy import MeterProxy
from tests.support.upstream import FakeProvider

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
HOOKS = ["requestheaders", "request", "responseheaders", "response"]

RECORDER = """
import json
from pathlib import Path

from mitmproxy import ctx

LOG = Path({log!r})


class HookRecorder:
    def _seen(self, hook, flow):
        dispatch = ctx.master.addons.trigger_event
        owner = type(getattr(dispatch, "__self__", None)).__name__
        with LOG.open("a") as f:
            f.write(json.dumps([flow.id, hook, owner]) + "\\n")

    def requestheaders(self, flow):
        self._seen("requestheaders", flow)

    def request(self, flow):
        self._seen("request", flow)

    def responseheaders(self, flow):
        self._seen("responseheaders", flow)

    def response(self, flow):
        self._seen("response", flow)


addons = [HookRecorder()]
"""


@pytest.mark.parametrize("fast", [True, False], ids=["indexed", "mitmproxy-walk"])
def test_a_second_script_sees_every_hook_of_every_call(
    fast: bool,
    fake_provider: FakeProvider,
    tmp_path: Path,
    mitm_confdir: Path,
    test_catalog: Path,
) -> None:
    log = tmp_path / "hooks.jsonl"
    recorder = tmp_path / "recorder.py"
    recorder.write_text(RECORDER.format(log=str(log)))
    proxy = MeterProxy(
        tmp_path / "proxy",
        catalog=test_catalog,
        confdir=mitm_confdir,
        options={"meter_fast_dispatch": fast},
        mitm_args=("-s", str(recorder)),
    )
    fake_provider.reset()
    url = fake_provider.base_url("openai") + "/v1/chat/completions"
    with proxy, httpx2.Client(proxy=proxy.url, timeout=30) as client:
        ids = []
        for _ in range(5):
            r = client.post(url, json=CHAT, headers={"authorization": f"Bearer {KEYS['alice']}"})
            assert r.status_code == 200
            ids.append(r.headers["x-request-id"])
        rows = proxy.wait_for_events(ids)
    assert [row["consumer"] for row in rows] == ["alice"] * 5
    seen = [json.loads(line) for line in log.read_text().splitlines()]
    flows = list(dict.fromkeys(flow_id for flow_id, _, _ in seen))
    assert len(flows) == 5
    for flow_id in flows:
        assert [hook for f, hook, _ in seen if f == flow_id] == HOOKS
    assert {owner for _, _, owner in seen} == {"HookIndex" if fast else "AddonManager"}
