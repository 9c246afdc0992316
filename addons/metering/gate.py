"""The ``request`` hook's decision for a metered call: refuse it here, or send it on.

In order, each step answering the call itself (never forwarded) or passing it on:
an unknown or ambiguous key under ``reject``; a gateway route whose request would
leave its provider's host; a body that decodes past the budget (a compression bomb,
recorded as refused); the limits (:class:`~addons.metering.governance.Governance`,
recorded as refused); key injection (refused when the provider is only named, not
the destination). A call let through gets its request rewrites (OpenAI's
``include_usage``, a plain stream for the durable end watch).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from addons.metering import errors, keys
from addons.metering.flowstate import FlowMeter, where
from addons.metering.governance import Governance
from addons.metering.ratelog import RateLimitedLog
from meterline.entitlements import Refusal

log = logging.getLogger("meterline.proxy")


class RequestGate:
    def __init__(
        self,
        governance: Governance,
        rejections: RateLimitedLog,
        record: Callable[[dict[str, Any]], None],
    ) -> None:
        self.governance = governance
        self.rejections = rejections
        self.record = record
        # Set by the addon's ``configure`` (plain attributes, read per flow).
        self.include_usage = True
        self.durable = True
        self.proxy_id: str | None = None

    def admit(self, st: FlowMeter) -> bool:
        """Decide ``st``'s call. False: it was answered here and is metered no further
        (a refusal by limits or budget is recorded as such)."""
        flow = st.flow
        if st.reject:
            why, message = st.rejection()
            self.rejections.warning("meterline: %s: rejected %s: %s", flow.id, where(st), why)
            errors.respond(flow, st.provider.flavor, "unknown_key", message)
            return False
        if st.misrouted is not None:  # never to a host that is not the route's provider's
            self.rejections.warning("meterline: %s: refused %s", flow.id, st.misrouted)
            errors.respond(flow, st.provider.flavor, "no_route", st.misrouted)
            return False
        budget = st.undecodable_budget()
        if budget is not None:  # a compression bomb: never forwarded unmetered
            refusal = body_too_large(budget)
            self.rejections.warning(
                "meterline: %s: refused %s: %s", flow.id, where(st), refusal.message
            )
            self._refuse(st, refusal, b"")
            return False
        if st.pinned_model is not None:
            # Pinned before the limits are checked: the check reads the model the call is
            # sent (and billed) as, not the one the client named or left out.
            st.pin_model(st.pinned_model)
        if st.tap is None or not st.tap.reads:  # reading a response back starts no work
            consumer = st.identity.consumer
            verdict = self.governance.check(
                consumer.name if consumer else None,
                st.provider.flavor,
                st.provider.name,
                flow,
                st.request_body,  # decoded: a gzip body's model and bound count too
            )
            if verdict is not None and verdict is not True:  # refused: never forwarded
                self._refuse(st, verdict, st.request_body())  # decoded, as the check read it
                return False
        if st.inject_refused or st.inject_env is not None:
            problem = self._inject(st)
            if problem is not None:
                self.governance.finish(flow.id, None)
                log.error("meterline: %s: %s", flow.id, problem)
                errors.respond(flow, st.provider.flavor, "injection_failed", problem)
                return False
        flavor = st.provider.flavor
        if flavor == "openai" and self.include_usage and not st.provider.keep_request:
            st.add_include_usage()
        if flavor != "gemini" and not st.drop_usage:
            st.ask_plain_stream()
        st.t_request = time.time()
        return True

    @staticmethod
    def _inject(st: FlowMeter) -> str | None:
        """Put the consumer's provider key on the request; the message if it cannot."""
        req = st.flow.request
        if st.inject_refused:  # the provider is named (Host, SNI), not the destination
            return (
                f"Meterline proxy: key injection for {st.provider.name} needs the request "
                f"to go to the provider's own host, not {req.host}"
            )
        assert st.inject_env is not None
        path, _, query = req.path.partition("?")
        try:
            query = keys.inject_key(req.headers, query, st.provider, st.inject_env)
        except keys.InjectionError as e:
            return f"Meterline proxy: {e}"
        req.path = f"{path}?{query}" if query else path
        st.injected_key = keys.injected_key(req.headers, st.provider).encode()
        # Unencoded, so a streamed answer echoing the key can be scrubbed as it passes.
        req.headers["accept-encoding"] = "identity"
        return None

    def _refuse(self, st: FlowMeter, refusal: Refusal, body: bytes) -> None:
        """Answer ``st``'s call with ``refusal`` (never forwarded) and record it: zero
        tokens and the refusal's ``reason``; ``body``: decoded, to name the model."""
        consumer = st.identity.consumer
        who = (consumer.name if consumer else None, st.identity.fingerprint)
        provider = (st.provider.name, st.provider.flavor)
        event = self.governance.refuse(st.flow, provider, who, refusal, self.proxy_id, body)
        self.record(event)


def body_too_large(budget: int) -> Refusal:
    """413 for a request body that decodes past ``budget`` bytes (a compression bomb):
    read as empty, it would pass every limit and be metered as no input."""
    return Refusal(
        "too_large",
        f"Request body decodes to more than {budget} bytes: Meterline cannot meter it.",
        "body_too_large",
    )
