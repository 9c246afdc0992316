"""``meter.py`` changed or moved away while the proxy runs: the running meter stays.

mitmproxy reloads a changed ``-s`` script (only that file, not the modules it imports)
and drops one whose file disappears; either turned metering off for every later call.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx2

from tests.conftest import KEYS
from tests.support.proxy import ADDON, MeterProxy
from tests.support.upstream import FakeProvider

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def test_a_changed_or_removed_meter_py_keeps_the_running_meter(
    fake_provider: FakeProvider, tmp_path: Path, mitm_confdir: Path, test_catalog: Path
) -> None:
    script = tmp_path / "deploy" / "meter.py"
    script.parent.mkdir()
    shutil.copy(ADDON, script)
    proxy = MeterProxy(
        tmp_path / "proxy", catalog=test_catalog, confdir=mitm_confdir, script=script
    )
    proxy.start()
    try:
        _calls_survive_changes(proxy, fake_provider, script)
    finally:
        proxy.stop()


def _calls_survive_changes(proxy: MeterProxy, fake_provider: FakeProvider, script: Path) -> None:
    proxy.wait_for_log("is not reloaded when it changes: restart to upgrade")
    fake_provider.reset()
    url = fake_provider.base_url("openai") + "/v1/chat/completions"
    headers = {"authorization": f"Bearer {KEYS['alice']}"}
    ids = []
    with httpx2.Client(proxy=proxy.url, timeout=30) as client:
        for change in ("edited", "broken", "removed"):
            if change == "edited":
                script.write_text(script.read_text() + "\n# a new version\n")
            elif change == "broken":  # a new meter.py that cannot load beside old modules
                script.write_text("from addons.metering import no_such_module\n")
            else:
                script.unlink()
            time.sleep(2.5)  # mitmproxy checks its scripts every second
            for _ in range(5):
                r = client.post(url, json=CHAT, headers=headers)
                assert r.status_code == 200
                ids.append(r.headers["x-request-id"])
    rows = proxy.wait_for_events(ids)
    assert {row["consumer"] for row in rows} == {"alice"}
    assert proxy.log_text().count("Loading script") == 1
