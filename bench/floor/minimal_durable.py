"""The least a durable meter can do, for bench/meter_floor.py: the meter's request side
as shipped, then, before the reply, the body parsed, its usage read into a small event
and that event appended to a file (one ``orjson.loads``, one ``orjson.dumps``, one
``os.write``). No writer, no store, no provider quirks, no estimates: a lower bound on
any design that meters each answered call inside the proxy process before replying."""

from __future__ import annotations

import os
import tempfile
import time

import orjson
from mitmproxy import http

from addons.meter import Meter


class MinimalDurable(Meter):
    def running(self) -> None:
        super().running()
        fd, _ = tempfile.mkstemp(prefix="minimal-", suffix=".jsonl", dir=os.getcwd())
        self.event_fd = fd

    def response(self, flow: http.HTTPFlow) -> None:
        st = self._active.pop(flow.id, None)
        resp = flow.response
        if st is None or resp is None:
            return
        body = orjson.loads(resp.content or b"{}")
        usage = body.get("usage") or {}
        event = {
            "event_id": flow.id,
            "ts": time.time(),
            "consumer": st.identity.consumer.name if st.identity.consumer else None,
            "key_fp": st.identity.fingerprint,
            "model": body.get("model"),
            "input_tokens": usage.get("prompt_tokens", 0),
            "output_tokens": usage.get("completion_tokens", 0),
            "status": resp.status_code,
        }
        os.write(self.event_fd, orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE))

    def done(self) -> None:
        super().done()
        os.close(self.event_fd)


addons = [MinimalDurable()]
