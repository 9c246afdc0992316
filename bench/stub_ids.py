"""How many events a day of calls with a non-unique provider id keeps.

Groq's ``groq/compound`` answers every call with ``"id": "stub"``. Before event ids named
one call, every such call after the first of the day got the event id ``groq:stub`` and
was dropped by the store's duplicate check (one day window): a day of N calls kept 1.
Event ids are now made by the proxy, one per exchange (``addons/metering/eventid.py``).

This sends ``--calls`` real recorded ``groq/compound`` answers (JSON, and SSE) through a
real mitmdump with the addon, all within one day, with and without a request-id header
on the answer, and counts the events stored.

Usage::

    .venv/bin/python bench/stub_ids.py              # 300 calls per case
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import KEYS, new_proxy  # noqa: E402
from tests.support.clients import ca_context  # noqa: E402
from tests.support.proxy import write_catalog  # noqa: E402
from tests.support.recordings import load_recordings  # noqa: E402
from tests.support.replay import ReplayUpstream  # noqa: E402

CASES = ("groq/chat-compound-web-search", "groq/chat-sse-compound-web-search")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    calls = max(1, min(args.calls, 5000))
    recs = [r for r in load_recordings() if r.id in CASES]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        confdir = work / "confdir"
        confdir.mkdir()
        with ReplayUpstream(recs, work) as upstream:
            catalog = write_catalog(
                work / "catalog.yaml",
                upstream.catalog_providers(),
                consumers={"alice": [KEYS["alice"]]},
            )
            proxy = new_proxy(work / "proxy", confdir, catalog).start()
            try:
                sent = 0
                with httpx2.Client(proxy=proxy.url, verify=ca_context(proxy), timeout=30) as c:
                    for rec in recs:
                        for with_request_id in (True, False):
                            headers = {
                                "authorization": f"Bearer {KEYS['alice']}",
                                "x-replay": rec.id,
                            }
                            if not with_request_id:
                                headers["x-replay-no-request-id"] = "1"
                            url = upstream.base_url("groq", tls=True) + rec.path_and_query
                            for _ in range(calls):
                                c.post(url, content=rec.request_body, headers=headers).read()
                                sent += 1
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and len(proxy.events()) < sent:
                    time.sleep(0.2)
                rows = proxy.events()
            finally:
                proxy.stop()
    kept = len(rows)
    ids = len({r["event_id"] for r in rows})
    paired = sum(r["request_id"] is not None for r in rows)
    print(f"{sent} groq/compound calls (response id 'stub'), JSON and SSE, one day:")
    print(f"  events kept: {kept}/{sent}, distinct event ids: {ids}")
    print(f"  with a request id: {paired}; without: {kept - paired}")
    sys.exit(0 if kept == sent == ids else 1)


if __name__ == "__main__":
    main()
