"""Build a finished flow's usage events: settle the usage (reported or estimated), log
why it is not reported when it is not, and hand the events on.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from mitmproxy import http
from mitmproxy.net.http import url

from addons.metering import background, bounded, events, jsoncodec, keyecho
from addons.metering.bounded import count_tokens, estimate_request_input
from addons.metering.flowstate import FlowMeter, raw_header, where
from addons.metering.governance import Governance
from addons.metering.reserve import estimate_request
from addons.metering.settle import OnceLog, Settled, settle
from addons.metering.usage import Seen, Usage

log = logging.getLogger("meterline.proxy")
_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')


class Finisher:
    """Turns finished flows into events for ``record``; options are set by the addon."""

    def __init__(self, governance: Governance, record: Callable[[dict[str, Any]], None]) -> None:
        self.governance = governance
        self.record = record
        self.log_payloads = False
        self.abandoned_at_bound = True
        """A non-streamed call nobody waited for is metered at its output bound (rule 5)."""
        self.proxy_id: str | None = None
        self._once = OnceLog()

    def finish_whole(self, st: FlowMeter, body: bytes) -> None:
        """Meter a body that arrived in one piece (decoded and parsed in one pass)."""
        st.consume(body)
        self.finish(st, False)

    def finish(self, st: FlowMeter, cut: bool) -> None:
        if st.finished:  # metered as cut at shutdown; mitmproxy then handed on the rest
            return
        st.finished = True
        flow = st.flow
        resp = flow.response
        if resp is None and not (cut and left_working(flow)):
            # No answer, and the provider was not left working on one: it failed, was
            # never reached, or the client left before its request was whole.
            log.info("meterline: %s: no response from %s, nothing metered", flow.id, where(st))
            self.governance.finish(flow.id, None)
            return
        if not st.started:
            st.start()
        if st.extractor is not None:
            st.drain_decoder()
            usage, seen = st.extractor.finish(), st.extractor.seen()
            problems = list(st.extractor.problems)
        else:  # the client left while the provider worked on the whole request: it bills it
            usage, seen, problems = None, Seen(), []
        if st.decode_failed:
            problems.insert(0, f"cannot decode body: {st.decode_failed}")
        if st.injected_key is not None:  # a provider's error may quote the key it got
            problems = [keyecho.mask_text(p, st.injected_key) for p in problems]
        status_code = resp.status_code if resp is not None else 0
        keyed = None
        if st.tap is not None:  # the Responses API: a background response is billed when read
            verdict = background.decide(
                st.tap,
                st.provider.name,
                status_code=status_code,
                sse="event-stream" in st.response_headers.get("content-type", ""),
                request_json=st.request_json,
            )
            if isinstance(verdict, background.Skip):
                log.debug("meterline: %s: %s: no event: %s", flow.id, where(st), verdict.why)
                queued = (
                    None if st.tap.reads else background.queued_event_id(st.tap, st.provider.name)
                )
                if queued is not None:  # its tokens come later: hold what it may cost
                    self.governance.hold(flow.id, queued)
                else:
                    self.governance.finish(flow.id, None)
                return
            keyed = verdict
            if keyed is not None and usage is None:  # ended with no usage: nothing billed
                usage = Usage()
        settled = settle(
            st.provider.flavor,
            usage,
            seen,
            status_code=status_code,
            cut=cut,
            request_model=lambda: request_model(st),
            estimate_input=lambda model: estimate_request_input(
                st.provider.flavor, st.request_body(), model=model
            ),
            count_output=lambda model: count_output(st, model),
        )
        usage, status = settled.usage, settled.status
        if resp is None and self.abandoned_at_bound and not st.streaming_requested():
            # The provider generates the whole answer and bills it; the proxy never sees
            # it. Metered at the most it could be, as the limits held it: metered as 0,
            # a client that always timed out spent past any hard cap, unseen.
            bound = estimate_request(st.provider.flavor, flow.request.path, st.request_body())
            usage.output = max(usage.output, bound.output)
        self._note_settled(flow.id, st, settled, cut)
        if problems and status_code < 400 and not settled.invalid:
            self._warn_problems(flow.id, st, problems)
        elif problems:
            log.debug("meterline: %s: %s answered %s: %s", flow.id, where(st), status, problems)
        consumer = st.identity.consumer
        exchange = events.Exchange(
            provider=st.provider.name,
            flavor=st.provider.flavor,
            method=flow.request.method,
            host=pretty_host(flow.request),
            path=flow.request.path,
            consumer=consumer.name if consumer else None,
            key_fingerprint=st.identity.fingerprint,
            status=status,
            streamed=st.streaming_requested()
            or "event-stream" in st.response_headers.get("content-type", ""),
            request_id=events.request_id_from(st.response_headers),
            t_request=st.t_request,
            t_first_byte=st.t_first_byte,
            t_done=st.t_done,
            at=keyed.at if keyed is not None else None,
        )
        event_id = keyed.event_id if keyed is not None else None
        rows = events.build_events(exchange, usage, self.proxy_id, event_id)
        try:  # counted before it is spooled (a store read may see it at once), ...
            self.governance.finish(flow.id, rows)
        finally:  # ... and recorded whatever governance does: the provider bills it
            for event in rows:
                self.record(event)

    def _note_settled(self, flow_id: str, st: FlowMeter, settled: Settled, cut: bool) -> None:
        """Say why a call is not metered from the provider's final report, if it is not.

        Unusable counts are logged once per provider and kind of problem (a provider
        that always sends them would otherwise flood the log).
        """
        if settled.invalid and self._once.first(st.provider.name, settled.invalid):
            log.warning(
                "meterline: %s: %s reported unusable usage (%s): estimated and flagged; "
                "further reports like it are not logged",
                flow_id,
                where(st),
                settled.invalid,
            )
        if cut and settled.status is None:
            log.warning(
                "meterline: %s: response from %s cut short (client or provider went away); "
                "usage estimated where not reported",
                flow_id,
                where(st),
            )
        elif cut:
            log.debug("meterline: %s: connection ended after the final usage report", flow_id)
        elif settled.why_estimated:
            why = keyecho.mask_text(settled.why_estimated, st.injected_key)
            log.debug("meterline: %s: %s: %s", flow_id, where(st), why)

    def _warn_problems(self, flow_id: str, st: FlowMeter, problems: list[str]) -> None:
        if self.log_payloads:
            excerpt = st.request_body()[:500].decode("utf-8", "replace")
            log.warning(
                "meterline: %s: unreadable response from %s: %s (request: %s)",
                flow_id,
                where(st),
                "; ".join(problems),
                excerpt,
            )
        else:
            log.warning(
                "meterline: %s: unreadable response from %s: %d problem(s), first: %s",
                flow_id,
                where(st),
                len(problems),
                problems[0][:200],
            )


def left_working(flow: http.HTTPFlow) -> bool:
    """Whether the provider was left working on a call nobody waits for any more: the
    whole request was on its way to it, no answer came, and then the client went away
    (an agent's timeout, a Ctrl-C) or the proxy stopped. Providers answer a JSON call
    once it is generated and bill it though no one reads it: such a call is metered as
    cut, its input estimated. A provider that failed, or was never reached, bills
    nothing, and neither does a request the client did not finish sending."""
    server = flow.server_conn
    if flow.request.timestamp_end is None or server.timestamp_tcp_setup is None:
        return False  # the request not whole, or no connection to send it on
    if server.tls and server.timestamp_tls_setup is None:
        return False
    if flow.error is None:  # finished without an error: the proxy is stopping
        return True
    msg = flow.error.msg
    return msg.startswith(_CLIENT_LEFT) or "reset by client" in msg


#: mitmproxy's error when an HTTP/1 client closes its connection mid-exchange (HTTP/2:
#: "stream reset by client (CANCEL)"). A closed HTTP/2 connection says "peer closed
#: connection" on either side, so it is not told apart: such a call is not metered.
_CLIENT_LEFT = "Client disconnected"


@lru_cache(maxsize=256)
def _authority_host(authority: str) -> str:
    return url.parse_authority(authority, check=False)[0]


def pretty_host(request: http.Request) -> str:
    """``request.pretty_host``, memoised: mitmproxy validates the Host header (IDNA)
    on every read, a few µs per call on the hot path for the same few hosts."""
    if request.is_http2 or request.is_http3:  # the :authority pseudo-header
        authority = request.host_header
    else:
        authority = raw_header(request.headers, b"host")
    return _authority_host(authority) if authority else request.host


def count_output(st: FlowMeter, model: str | None) -> int:
    """Tokens of the output text seen (tiktoken), for an estimate."""
    text = st.extractor.output_text() if st.extractor else ""
    return count_tokens(text, model or "") if text else 0


def request_model(st: FlowMeter) -> str | None:
    if st.provider.flavor == "gemini":
        m = re.search(r"/models/([^/:]+):", st.path)
        return m.group(1) if m else None
    body = st.request_body()
    if len(body) > bounded.MAX_PARSED_REQUEST:  # bounded work: no parse of a huge body
        found = _MODEL_FIELD.search(body, 0, bounded.MAX_PARSED_REQUEST)
        return found.group(1).decode("utf-8", "replace") if found else None
    try:
        data = jsoncodec.loads(body)
    except ValueError:
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) else None
