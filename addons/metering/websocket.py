"""WebSockets the proxy meters: the Responses API's WebSocket mode, OpenAI Realtime and
Gemini Live sessions.

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

:class:`SocketMeter` keeps the open sockets, their turns and what every kind shares
(the limits of a turn, a refusal on the socket, an event's exchange, counting and
recording); a Realtime session's server messages are read by
:mod:`addons.metering.realtime` and a Gemini Live session's messages by
:mod:`addons.metering.geminilive`. Every metered socket keeps only its latest message in
mitmproxy's flow (mitmproxy keeps them all until the socket closes: a voice session's
audio piled up in the proxy's memory).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.websocket import WebSocketMessage

from addons.metering import errors, events, geminilive, jsoncodec, realtime
from addons.metering.bounded import count_tokens, estimate_request_input
from addons.metering.extract.openai import OpenAIReader
from addons.metering.finish import pretty_host
from addons.metering.geminilive import LiveSession
from addons.metering.governance import Governance
from addons.metering.keys import Identity
from addons.metering.providers import MeteredProvider, normalise_path
from addons.metering.ratelog import RateLimitedLog
from addons.metering.realtime import RealtimeSession
from addons.metering.reserve import Estimate
from addons.metering.settle import OnceLog, settle
from addons.metering.sse import SSEEvent
from addons.metering.usage import Seen, Usage
from meterline.entitlements import Refusal

log = logging.getLogger("meterline.proxy")

#: The path of a Responses WebSocket: ``/v1/responses`` (Azure: ``/openai/v1/responses``).
_RESPONSES_SOCKET = re.compile(r"/responses/?$")
#: Server events that end a response and carry its final usage.
_FINAL = re.compile(rb'"response\.(?:completed|incomplete|failed)"')
_FINAL_TYPES = frozenset({"response.completed", "response.incomplete", "response.failed"})
_CREATE = b'"response.create"'
#: The events of a turn in progress the meter keeps: its start (model, id) and its text
#: (for an estimate if the socket closes before the final event).
_TURN_EVENT = re.compile(
    rb'"type"\s*:\s*"(response\.created|response\.(?:output_text|refusal|function_call_arguments'
    rb'|reasoning_text|reasoning_summary_text)\.delta)"'
)
#: Response ids remembered per socket against a repeated final event.
RECENT_IDS = 256
#: A server ``error`` event: the turn ended without a response (``previous_response_not_found``).
_ERROR = re.compile(rb'"type"\s*:\s*"error"')


def is_responses_socket(flavor: str, path: str) -> bool:
    """Whether a WebSocket on ``path`` of a provider of ``flavor`` is the Responses API's."""
    return flavor == "openai" and _RESPONSES_SOCKET.search(normalise_path(path)) is not None


def is_metered_socket(flavor: str, path: str) -> bool:
    """Whether a WebSocket on ``path`` of a provider of ``flavor`` is one the proxy meters
    (a Responses socket, a Realtime or a Gemini Live session)."""
    return (
        is_responses_socket(flavor, path)
        or realtime.is_realtime_socket(flavor, path)
        or geminilive.is_live_socket(flavor, path)
    )


@dataclass(slots=True)
class Socket:
    """One open metered WebSocket: who opened it, its kind and the turn in progress."""

    provider: MeteredProvider
    identity: Identity
    created_at: float | None = None
    """When the client's latest ``response.create`` passed the proxy."""
    create: bytes = b""
    """That message, for an estimate of the input when no usable usage is reported."""
    first_byte_at: float | None = None
    """When the first server message after it passed the proxy."""
    request_id: str | None = None
    metered: dict[str, None] = field(default_factory=dict)
    """The ids of the responses metered on this socket, the latest :data:`RECENT_IDS`
    (a repeated final event bills once, even after another response's)."""
    reserved: bool = False
    """Governance holds the estimate of the turn in progress (released at its end)."""
    session: RealtimeSession | None = None
    """A Realtime session's models (None: not a Realtime session)."""
    live: LiveSession | None = None
    """A Gemini Live session's model (None: not a Live session)."""
    turn: OpenAIReader | None = None
    """A Responses turn in progress: its text so far, for an estimate if the socket closes
    before the turn's final event."""


class SocketMeter:
    """Meters the WebSockets open through the proxy (see the module docstring)."""

    def __init__(self, governance: Governance, record: Callable[[dict[str, Any]], None]) -> None:
        self.governance = governance
        self.record = record
        self.proxy_id: str | None = None
        self._open: dict[str, Socket] = {}
        self.once = OnceLog()
        """Unusable usage and unreadable final events: logged once per provider and kind."""

    def start(
        self,
        flow: http.HTTPFlow,
        provider: MeteredProvider,
        identity: Identity,
        session: RealtimeSession | None = None,
        live: LiveSession | None = None,
    ) -> None:
        """A socket opened: a Responses one, a Realtime ``session`` or a Gemini ``live`` one."""
        headers = flow.response.headers if flow.response is not None else {}
        request_id = events.request_id_from(headers)
        self._open[flow.id] = Socket(
            provider, identity, request_id=request_id, session=session, live=live
        )

    def opening(
        self,
        flow: http.HTTPFlow,
        provider: MeteredProvider,
        identity: Identity,
        rejections: RateLimitedLog,
    ) -> Coroutine[Any, Any, None] | None:
        """A metered socket's upgrade request (``request`` hook): refused in the
        provider's error shape, never upgraded, when the consumer's limits refuse every
        call it could make (:meth:`~addons.metering.governance.Governance.check_session`).
        Before, a session opened whatever the limits: a Gemini Live session, which has no
        turn the proxy can refuse, went on past a hard cap. At start, it waits for the
        first read of the store, as a call does (the hook then returns a coroutine)."""
        if identity.consumer is None:
            return None
        if self.governance.awaits_first_read(identity.consumer.name):
            return self._opening_after_first_read(flow, provider, identity, rejections)
        self._check_opening(flow, provider, identity, rejections)
        return None

    async def _opening_after_first_read(
        self,
        flow: http.HTTPFlow,
        provider: MeteredProvider,
        identity: Identity,
        rejections: RateLimitedLog,
    ) -> None:
        await self.governance.first_read()
        self._check_opening(flow, provider, identity, rejections)

    def _check_opening(
        self,
        flow: http.HTTPFlow,
        provider: MeteredProvider,
        identity: Identity,
        rejections: RateLimitedLog,
    ) -> None:
        consumer = identity.consumer
        assert consumer is not None
        path = flow.request.path
        model = None
        if realtime.is_realtime_socket(provider.flavor, path):
            model = realtime.RealtimeSession.from_path(path).model
        refusal = self.governance.check_session(
            consumer.name, provider.flavor, provider.name, flow, model
        )
        if refusal is None:
            return
        rejections.warning(
            "meterline: %s: refused a %s session of %s: %s",
            flow.id,
            provider.name,
            consumer.name,
            refusal.reason,
        )
        who = (consumer.name, identity.fingerprint)
        body = json.dumps({"model": model}).encode() if model else b""
        where = (provider.name, provider.flavor)
        self.record(self.governance.refuse(flow, where, who, refusal, self.proxy_id, body))

    def message(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """Meter a server's final event; check a client's ``response.create``. A turn
        that must wait for governance's first read of the store (a proxy just started)
        waits off the event loop: the hook then returns a coroutine for mitmproxy."""
        socket = self._open.get(flow.id)
        if socket is None or flow.websocket is None or not flow.websocket.messages:
            return None
        messages = flow.websocket.messages
        message = messages[-1]
        if len(messages) > 1:  # mitmproxy keeps every message until the socket closes
            del messages[:-1]
        content = message.content
        if socket.live is not None:
            geminilive.on_message(self, flow, socket, socket.live, message)
            return None
        if message.from_client:
            if _is_create(socket, content):
                consumer = socket.identity.consumer
                if consumer is not None and self.governance.awaits_first_read(consumer.name):
                    return self._create_after_first_read(flow, socket, message)
                self._create(flow, socket, message)
            return None
        if socket.first_byte_at is None:
            socket.first_byte_at = time.time()
        # Text or binary frames alike: a server may send its JSON events as either.
        if socket.session is not None:
            if realtime.READ.search(content):
                realtime.on_server_message(self, flow, socket, socket.session, content)
            elif socket.reserved and _ERROR.search(content) and _is_error_event(content):
                self.turn_ended(flow, socket)
        elif _FINAL.search(content):
            self._final(flow, socket, content)
        elif socket.turn is not None and (seen := _TURN_EVENT.search(content)):
            socket.turn.on_event(SSEEvent(seen[1].decode(), content.decode("utf-8", "replace")))
        elif (
            (socket.reserved or socket.turn is not None)
            and _ERROR.search(content)
            and _is_error_event(content)
        ):
            self.turn_ended(flow, socket)  # the provider refused the turn: nothing billed
        return None

    async def _create_after_first_read(
        self, flow: http.HTTPFlow, socket: Socket, message: WebSocketMessage
    ) -> None:
        await self.governance.first_read()
        self._create(flow, socket, message)

    def _create(self, flow: http.HTTPFlow, socket: Socket, message: WebSocketMessage) -> None:
        """A client's ``response.create``: checked against the limits, dropped if refused."""
        content = message.content
        socket.created_at, socket.create, socket.first_byte_at = time.time(), content, None
        refusal = self.check(flow, socket, content)
        if refusal is not None:
            message.drop()
            self.refuse(flow, socket, refusal)
        elif socket.session is None:
            socket.turn = OpenAIReader([])

    def end(self, flow: http.HTTPFlow) -> None:
        socket = self._open.pop(flow.id, None)
        if socket is None:
            return
        if socket.turn is not None and socket.created_at is not None:
            # Closed mid-turn: the provider had the request, and may have answered part
            # of it: estimated from the request and the text seen, as a cut stream is.
            self.meter(flow, socket, None, None, cut=True)
        elif socket.reserved:  # a session's response cut: its hold is freed
            self.governance.finish(flow.id, None)

    def check(
        self, flow: http.HTTPFlow, socket: Socket, create: bytes, asked: Estimate | None = None
    ) -> Refusal | None:
        """The consumer's limits for one turn (its ``response.create``; ``asked``: what it
        may cost when the request does not say, a Realtime session's): a refusal, or None
        (admitted, its estimate reserved under the socket's flow id, or not governed)."""
        consumer = socket.identity.consumer
        if consumer is None:
            return None
        if socket.reserved:  # a turn sent before the last ended: release its hold first
            self.governance.finish(flow.id, None)
        provider = socket.provider
        if asked is None and socket.session is not None:
            asked = realtime.turn_estimate(socket.session, create)
        verdict = self.governance.check(
            consumer.name, provider.flavor, provider.name, flow, lambda: create, asked
        )
        socket.reserved = verdict is True
        return verdict if isinstance(verdict, Refusal) else None

    def refuse(self, flow: http.HTTPFlow, socket: Socket, refusal: Refusal) -> None:
        """Answer a refused turn on the socket and record it (zero tokens, its reason)."""
        provider = socket.provider
        status, body = errors.error_body(provider.flavor, refusal.kind, refusal.message)  # type: ignore[arg-type]
        error = {"type": "error", "status": status, **jsoncodec.loads(body)}
        if socket.session is not None:  # Realtime's error events carry an id of their own
            error["event_id"] = f"event_meterline_{uuid.uuid4().hex[:16]}"
        ctx.master.commands.call("inject.websocket", flow, True, json.dumps(error).encode(), True)
        consumer = socket.identity.consumer
        exchange = self.exchange(flow, socket, status)
        event = events.build_event(exchange, Usage(model=turn_model(socket)), self.proxy_id)
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

    def exchange(self, flow: http.HTTPFlow, socket: Socket, status: int | None) -> events.Exchange:
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

    def _final(self, flow: http.HTTPFlow, socket: Socket, content: bytes) -> None:
        try:
            obj = jsoncodec.loads(content)
        except ValueError as e:
            # Named a final event but unreadable (nested too deeply, cut): for a turn in
            # progress, metered from the request's estimate, as a garbled HTTP body is.
            if socket.created_at is not None or socket.reserved:
                self.meter(flow, socket, None, f"unreadable final event: {e}")
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
            self.turn_ended(flow, socket)
            return
        if obj["type"] == "response.failed" and not isinstance(response.get("usage"), dict):
            self.turn_ended(flow, socket)  # failed with nothing reported: nothing billed
            return
        self.response_ended(flow, socket, response)

    def response_ended(self, flow: http.HTTPFlow, socket: Socket, response: dict[str, Any]) -> None:
        """A response's final object: metered once (a repeated final event bills once)."""
        response_id = response.get("id")
        if isinstance(response_id, str):
            if response_id in socket.metered:
                return
            socket.metered[response_id] = None
            if len(socket.metered) > RECENT_IDS:
                del socket.metered[next(iter(socket.metered))]
        self.meter(flow, socket, response, None)

    def meter(
        self,
        flow: http.HTTPFlow,
        socket: Socket,
        response: dict[str, Any] | None,
        problem: str | None,
        cut: bool = False,
    ) -> None:
        """One event for the turn: from ``response``'s usage, or estimated (``problem``
        says why there is no readable response; ``cut``: the socket closed mid-turn, from
        what the turn showed); the turn's hold is freed."""
        reader = socket.turn if cut and socket.turn is not None else OpenAIReader([])
        if response is not None:
            reader.on_object(response)
        flavor = socket.provider.flavor
        create = socket.create
        settled = settle(
            flavor,
            reader.usage(),
            reader.seen(),
            status_code=200,
            cut=cut,
            request_model=lambda: turn_model(socket),
            estimate_input=lambda model: estimate_request_input(flavor, create, model=model),
            count_output=lambda model: count_tokens(reader.text(), model or ""),
        )
        trouble = problem or settled.invalid
        if trouble and self.once.first(socket.provider.name, trouble):
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
        exchange = self.exchange(flow, socket, settled.status)
        rows = events.build_events(exchange, settled.usage, self.proxy_id)
        socket.created_at = socket.first_byte_at = socket.turn = None
        socket.reserved = False
        self.count_and_record(flow.id, rows)

    def reported(
        self,
        flow: http.HTTPFlow,
        socket: Socket,
        usage: Usage,
        model: str | None,
        what: str,
        *,
        text: str = "",
        apart: str | None = None,
    ) -> None:
        """One event for usage a session's message reported (a Gemini Live turn, a
        Realtime transcription: ``what``, for the log) on ``model``; unusable figures are
        logged once per provider and kind and the event estimated from ``text``.
        ``apart``: the usage is not the turn's (a transcription), counted under that key
        (the turn's hold stays) and timed at this moment."""
        provider = socket.provider
        if usage.invalid is not None and self.once.first(provider.name, usage.invalid):
            log.warning(
                "meterline: %s: %s %s: %s: estimated and flagged; further reports like it "
                "are not logged",
                flow.id,
                provider.name,
                what,
                usage.invalid,
            )
        settled = settle(
            provider.flavor,
            usage,
            Seen(),
            status_code=200,
            cut=False,
            request_model=lambda: model,
            estimate_input=lambda model: 0,
            count_output=lambda model: count_tokens(text, model or "") if text else 0,
        )
        exchange = self.exchange(flow, socket, settled.status)
        if apart is not None:
            exchange.t_request = exchange.t_first_byte = exchange.t_done
        rows = events.build_events(exchange, settled.usage, self.proxy_id)
        self.count_and_record(apart or flow.id, rows)

    def count_and_record(self, flow_id: str, rows: list[dict[str, Any]]) -> None:
        """Count a turn's events against the consumer's limits (the hold kept under
        ``flow_id`` freed) and record them, whatever governance does: the provider bills
        them."""
        try:
            self.governance.finish(flow_id, rows)
        finally:
            for event in rows:
                self.record(event)

    def turn_ended(self, flow: http.HTTPFlow, socket: Socket) -> None:
        """A turn that ended with nothing to meter: its hold on the limits is freed (it
        was kept until the socket closed, refusing the consumer's other calls meanwhile)."""
        socket.created_at = socket.first_byte_at = socket.turn = None
        if socket.reserved:
            socket.reserved = False
            self.governance.finish(flow.id, None)


def _is_create(socket: Socket, content: bytes) -> bool:
    """Whether a client message is a ``response.create``. On a Responses socket every
    message is read as JSON when its bytes do not say so (``"response\\u002ecreate"`` or a
    binary frame is a create to the provider too, and passed the limits unchecked); a
    Realtime session checks each response again when the server announces it, so the
    bytes test is enough there (its client messages are mostly audio)."""
    if _CREATE in content:
        return True
    if socket.session is not None:
        return False
    try:
        obj = jsoncodec.loads(content)
    except ValueError:
        return False
    return isinstance(obj, dict) and obj.get("type") == "response.create"


def _is_error_event(content: bytes) -> bool:
    try:
        obj = jsoncodec.loads(content)
    except ValueError:
        return False
    return isinstance(obj, dict) and obj.get("type") == "error"


def turn_model(socket: Socket) -> str | None:
    """The model of the turn in progress: a Realtime session's, or the one its
    ``response.create`` names."""
    if socket.session is not None:
        return socket.session.model
    return _create_model(socket.create)


def _create_model(create: bytes) -> str | None:
    try:
        data = jsoncodec.loads(create) if create else None
    except ValueError:
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) else None
