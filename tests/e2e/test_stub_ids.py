"""Calls whose provider id is not unique (Groq's ``"id": "stub"``) are never merged."""

from __future__ import annotations

import time
from pathlib import Path

import httpx2
import pytest

from tests.conftest import KEYS, new_proxy
from tests.support.clients import ca_context
from tests.support.proxy import write_catalog
from tests.support.recordings import corpus_missing_reason, load_recordings
from tests.support.replay import ReplayUpstream

CALLS = 4


def test_every_stub_call_is_its_own_event(tmp_path: Path, mitm_confdir: Path) -> None:
    reason = corpus_missing_reason()
    if reason is not None:  # test_real_recordings fails under CI for this
        pytest.skip(reason)
    recs = [r for r in load_recordings() if r.meta.get("response_id") == "stub"]
    assert len(recs) >= 2
    sent = 0
    with ReplayUpstream(recs, tmp_path) as upstream:
        catalog = write_catalog(
            tmp_path / "catalog.yaml",
            upstream.catalog_providers(),
            consumers={"alice": [KEYS["alice"]]},
        )
        proxy = new_proxy(tmp_path / "proxy", mitm_confdir, catalog).start()
        try:
            with httpx2.Client(proxy=proxy.url, verify=ca_context(proxy), timeout=30) as client:
                for rec in recs:
                    for with_request_id in (True, False):
                        headers = {"authorization": f"Bearer {KEYS['alice']}", "x-replay": rec.id}
                        if not with_request_id:
                            headers["x-replay-no-request-id"] = "1"
                        url = upstream.base_url(rec.provider, tls=True) + rec.path_and_query
                        for _ in range(CALLS):
                            client.post(url, content=rec.request_body, headers=headers).read()
                            sent += 1
            # The calls' own events: a Groq compound call split by model also has one
            # event per underlying model beside its own (``<event_id>#<n>``).
            own = "event_id NOT LIKE '%#%'"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(proxy.events(own)) < sent:
                time.sleep(0.1)
            rows = proxy.events(own)
        finally:
            proxy.stop()
    assert len(rows) == sent
    assert len({r["event_id"] for r in rows}) == sent
    assert {r["response_id"] for r in rows} == {"stub"}
    assert len([r for r in rows if r["request_id"] is not None]) == sent // 2
