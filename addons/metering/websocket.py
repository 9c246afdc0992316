"""The Responses API's WebSocket mode: one event per response on the socket.

A client (the openai SDK's ``responses.connect()``, openai-agents, xAI's own) opens a
WebSocket with ``GET /v1/responses`` and then sends a ``response.create`` message per
turn (the body of a ``POST /v1/responses`` plus ``"type"``); the server answers each with
the events of a Responses stream, as WebSocket text messages, the last of them
``response.completed`` (or ``response.incomplete`` / ``response.failed``) carrying the
final ``response`` object with its ``usage``. The upgrade is not an HTTP call the meter
reads (its answer is the 101), so these turns passed through unmetered: 3 turns of 1,500
tokens each were stored as nothing.

Now each final message is read with the Responses usage reader
(:class:`~addons.metering.extract.openai.OpenAIReader`) and settled like a streamed call
(:func:`~addons.metering.settle.settle`): one event per response, attributed to the key
the upgrade request carried, recorded (spooled) in the ``websocket_message`` hook,
before mitmproxy forwards the message to the client. Other messages cost a substring
test: only server text messages holding a final event's name are parsed.

Limits apply per turn, as to a ``POST /v1/responses``: a governed consumer's
``response.create`` is checked (and its estimate reserved) before it is forwarded; a
refused one is dropped, answered on the socket with an ``error`` event in OpenAI's shape
(``status`` and ``error``) and recorded with its ``reason``, as a refused call is. The
socket stays open. Turns on one socket are sequential (the provider answers one
response at a time), so one reservation per socket is held at most.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.websocket import WebSocketMessage

from addons.metering import errors, events, jsoncodec
from addons.metering.bounded import count_tokens, estimate_request_input
from addons.metering.extract.openai import OpenAIReader
from addons.metering.finish import pretty_host
from addons.metering.governance import Governance
from addons.metering.keys import Identity
from addons.metering.providers import MeteredProvider, normalise_path
from addons.metering.settle import OnceLog, settle
from addons.metering.usage import Usage
from meterline.entitlements import Refusal

log = logging.getLogger("meterline.proxy")

#: The path of a Responses WebSocket: ``/v1/responses`` (Azure: ``/openai/v1/responses``).
_RESPONSES_SOCKET = re.compile(r"/responses/?$")
#: Server events that end a response and carry its final usage.
_FINAL = re.compile(rb'"response\.(?:completed|incomplete|failed)"')
_FINAL_TYPES = frozenset({"response.completed", "response.incomplete", "response.failed"})
_CREATE = b'"response.create"'
#: A server ``error`` event: the turn ended without a response (``previous_response_not_found``).
_ERROR = re.compile(rb'"type"\s*:\s*"error"')


def is_responses_socket(flavor: str, path: str) -> bool:
    """Whether a WebSocket on ``path`` of a provider of ``flavor`` is the Responses API's."""
    return flavor == "openai" and _RESPONSES_SOCKET.search(normalise_path(path)) is not None


@dataclass(slots=True)
class ResponsesSocket:
    """One open Responses WebSocket: who opened it and the turn in progress."""

    provider: MeteredProvider
    identity: Identity
    created_at: float | None = None
    """When the client's latest ``response.create`` passed the proxy."""
    create: bytes = b""
    """That message, for an estimate of the input when no usable usage is reported."""
    first_byte_at: float | None = None
    """When the first server message after it passed the proxy."""
    request_id: str | None = None
    last_response_id: str | None = None
    """The response metered last on this socket (a repeated final event bills once)."""
    reserved: bool = False
    """Governance holds the estimate of the turn in progress (released at its end)."""


class ResponsesSockets:
    """Meters the Responses WebSockets open through the proxy."""

    def __init__(self, governance: Governance, record: Callable[[dict[str, Any]], None]) -> None:
        self.governance = governance
        self.record = record
        self.proxy_id: str | None = None
        self._open: dict[str, ResponsesSocket] = {}
        self._once = OnceLog()
        """Unusable usage and unreadable final events: logged once per provider and kind."""

    def start(self, flow: http.HTTPFlow, provider: MeteredProvider, identity: Identity) -> None:
        headers = flow.response.headers if flow.response is not None else {}
        socket = ResponsesSocket(provider, identity, request_id=events.request_id_from(headers))
        self._open[flow.id] = socket

    def message(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """Meter a server's final event; check a client's ``response.create``. A turn
        that must wait for governance's first read of the store (a proxy just started)
        waits off the event loop: the hook then returns a coroutine for mitmproxy."""
        socket = self._open.get(flow.id)
        if socket is None or flow.websocket is None or not flow.websocket.messages:
            return None
        message = flow.websocket.messages[-1]
        content = message.content
        if message.from_client:
            if _CREATE in content and message.is_text:
                consumer = socket.identity.consumer
                if consumer is not None and self.governance.awaits_first_read(consumer.name):
                    return self._create_after_first_read(flow, socket, message)
                self._create(flow, socket, message)
            return None
        if socket.first_byte_at is None:
            socket.first_byte_at = time.time()
        if message.is_text:
            if _FINAL.search(content):
                self._final(flow, socket, content)
            elif socket.reserved and _ERROR.search(content) and _is_error_event(content):
                self._turn_ended(flow, socket)
        return None

    async def _create_after_first_read(
        self, flow: http.HTTPFlow, socket: ResponsesSocket, message: WebSocketMessage
    ) -> None:
        await self.governance.first_read()
        self._create(flow, socket, message)

    def _create(
        self, flow: http.HTTPFlow, socket: ResponsesSocket, message: WebSocketMessage
    ) -> None:
        """A client's ``response.create``: checked against the limits, dropped if refused."""
        content = message.content
        socket.created_at, socket.create, socket.first_byte_at = time.time(), content, None
        refusal = self._check(flow, socket, content)
        if refusal is not None:
            message.drop()
            self._refuse(flow, socket, refusal)

    def end(self, flow: http.HTTPFlow) -> None:
        socket = self._open.pop(flow.id, None)
        if socket is not None and socket.reserved:  # closed mid-turn: the estimate is freed
            self.governance.finish(flow.id, None)

    def _check(self, flow: http.HTTPFlow, socket: ResponsesSocket, create: bytes) -> Refusal | None:
        """The consumer's limits for one ``response.create``: a refusal, or None (admitted,
        its estimate reserved under the socket's flow id, or not governed)."""
        consumer = socket.identity.consumer
        if consumer is None:
            return None
        if socket.reserved:  # a turn sent before the last ended: release its hold first
            self.governance.finish(flow.id, None)
        provider = socket.provider
        verdict = self.governance.check(
            consumer.name, provider.flavor, provider.name, flow, lambda: create
        )
        socket.reserved = verdict is True
        return verdict if isinstance(verdict, Refusal) else None

    def _refuse(self, flow: http.HTTPFlow, socket: ResponsesSocket, refusal: Refusal) -> None:
        """Answer a refused turn on the socket and record it (zero tokens, its reason)."""
        provider = socket.provider
        status, body = errors.error_body(provider.flavor, refusal.kind, refusal.message)  # type: ignore[arg-type]
        error = {"type": "error", "status": status, **jsoncodec.loads(body)}
        ctx.master.commands.call("inject.websocket", flow, True, json.dumps(error).encode(), True)
        consumer = socket.identity.consumer
        exchange = self._exchange(flow, socket, status)
        event = events.build_event(
            exchange, Usage(model=_create_model(socket.create)), self.proxy_id
        )
        event["reason"] = refusal.reason
        socket.created_at = socket.first_byte_at = None
        log.info(
            "meterline: %s: %s WebSocket turn of %s refused: %s",
            flow.id,
            provider.name,
            consumer.name if consumer else None,
            refusal.reason,
        )
        self.record(event)

    def _exchange(
        self, flow: http.HTTPFlow, socket: ResponsesSocket, status: int | None
    ) -> events.Exchange:
        consumer = socket.identity.consumer
        return events.Exchange(
            provider=socket.provider.name,
            flavor=socket.provider.flavor,
            method=flow.request.method,
            host=pretty_host(flow.request),
            path=flow.request.path,
            consumer=consumer.name if consumer else None,
            key_fingerprint=socket.identity.fingerprint,
            status=status,
            streamed=True,
            request_id=socket.request_id,
            t_request=socket.created_at,
            t_first_byte=socket.first_byte_at,
            t_done=time.time(),
        )

    def _final(self, flow: http.HTTPFlow, socket: ResponsesSocket, content: bytes) -> None:
        try:
            obj = jsoncodec.loads(content)
        except ValueError as e:
            # Named a final event but unreadable (nested too deeply, cut): for a turn in
            # progress, metered from the request's estimate, as a garbled HTTP body is.
            if socket.created_at is not None or socket.reserved:
                self._meter(flow, socket, None, f"unreadable final event: {e}")
            return
        if not isinstance(obj, dict) or obj.get("type") not in _FINAL_TYPES:
            return  # a text delta quoting an event's name
        response = obj.get("response")
        if not isinstance(response, dict):
            log.warning(
                "meterline: %s: %s WebSocket %s without a response object: not metered",
                flow.id,
                socket.provider.name,
                obj.get("type"),
            )
            self._turn_ended(flow, socket)
            return
        if obj["type"] == "response.failed" and not isinstance(response.get("usage"), dict):
            self._turn_ended(flow, socket)  # failed with nothing reported: nothing billed
            return
        response_id = response.get("id")
        if isinstance(response_id, str):
            if response_id == socket.last_response_id:
                return
            socket.last_response_id = response_id
        self._meter(flow, socket, response, None)

    def _meter(
        self,
        flow: http.HTTPFlow,
        socket: ResponsesSocket,
        response: dict[str, Any] | None,
        problem: str | None,
    ) -> None:
        """One event for the turn: from ``response``'s usage, or estimated (``problem``
        says why there is no readable response); the turn's hold is freed."""
        reader = OpenAIReader([])
        if response is not None:
            reader.on_object(response)
        flavor = socket.provider.flavor
        create = socket.create
        settled = settle(
            flavor,
            reader.usage(),
            reader.seen(),
            status_code=200,
            cut=False,
            request_model=lambda: _create_model(create),
            estimate_input=lambda model: estimate_request_input(flavor, create, model=model),
            count_output=lambda model: count_tokens(reader.text(), model or ""),
        )
        trouble = problem or settled.invalid
        if trouble and self._once.first(socket.provider.name, trouble):
            log.warning(
                "meterline: %s: %s WebSocket response %s: %s: estimated and flagged; further "
                "reports like it are not logged",
                flow.id,
                socket.provider.name,
                settled.usage.response_id,
                trouble,
            )
        elif settled.why_estimated:
            log.debug("meterline: %s: WebSocket: %s", flow.id, settled.why_estimated)
        exchange = self._exchange(flow, socket, settled.status)
        rows = events.build_events(exchange, settled.usage, self.proxy_id)
        socket.created_at = socket.first_byte_at = None
        socket.reserved = False
        try:  # counted against the consumer's limits, as any call's usage is
            self.governance.finish(flow.id, rows)
        finally:  # recorded whatever governance does: the provider bills it
            for event in rows:
                self.record(event)

    def _turn_ended(self, flow: http.HTTPFlow, socket: ResponsesSocket) -> None:
        """A turn that ended with nothing to meter: its hold on the limits is freed (it
        was kept until the socket closed, refusing the consumer's other calls meanwhile)."""
        socket.created_at = socket.first_byte_at = None
        if socket.reserved:
            socket.reserved = False
            self.governance.finish(flow.id, None)


def _is_error_event(content: bytes) -> bool:
    try:
        obj = jsoncodec.loads(content)
    except ValueError:
        return False
    return isinstance(obj, dict) and obj.get("type") == "error"


def _create_model(create: bytes) -> str | None:
    try:
        data = jsoncodec.loads(create) if create else None
    except ValueError:
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) else None
