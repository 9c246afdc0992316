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
test: only server text messages holding an event the meter reads are parsed.

Limits apply per response, as to a ``POST /v1/responses``: a governed consumer's
``response.create`` is checked (and its estimate reserved) before it is forwarded; a
refused one is dropped, answered on the socket with an ``error`` event in OpenAI's shape
(``status`` and ``error``) and recorded with its ``reason``, as a refused call is. The
socket stays open. Several responses may be under way on one socket at once (the
Responses socket's lanes, ``stream_id``, each first in first out; creates sent before
the last response ended; a Realtime session's out-of-band responses), so each is a
:class:`Turn` with its own reservation (before, one per socket: every new create
released the one before, and ten creates sent together were all admitted past a hard
limit).

:class:`SocketMeter` keeps the open sockets, their turns and what every kind shares
(the limits of a turn, a refusal on the socket, an event's exchange, counting and
recording); a Responses socket's messages are read by :mod:`addons.metering.responsesws`,
a Realtime session's by :mod:`addons.metering.realtime` and a Gemini Live session's by
:mod:`addons.metering.geminilive`. Every metered socket keeps only its latest message in
mitmproxy's flow (mitmproxy keeps them all until the socket closes: a voice session's
audio piled up in the proxy's memory).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.websocket import WebSocketMessage

from addons.metering import errors, events, geminilive, jsoncodec, realtime, responsesws
from addons.metering.bounded import count_tokens, estimate_request_input
from addons.metering.extract.openai import OpenAIReader
from addons.metering.finish import pretty_host
from addons.metering.geminilive import LiveSession
from addons.metering.governance import Governance
from addons.metering.keys import Identity
from addons.metering.providers import MeteredProvider
from addons.metering.ratelog import RateLimitedLog
from addons.metering.realtime import RealtimeSession
from addons.metering.reserve import Estimate
from addons.metering.settle import OnceLog, settle
from addons.metering.usage import Seen, Usage
from meterline.entitlements import Refusal

log = logging.getLogger("meterline.proxy")

#: Response ids remembered per socket against a repeated final event.
RECENT_IDS = 256


def is_metered_socket(flavor: str, path: str) -> bool:
    """Whether a WebSocket on ``path`` of a provider of ``flavor`` is one the proxy meters
    (a Responses socket, a Realtime or a Gemini Live session)."""
    return (
        responsesws.is_responses_socket(flavor, path)
        or realtime.is_realtime_socket(flavor, path)
        or geminilive.is_live_socket(flavor, path)
    )


@dataclass(slots=True)
class Turn:
    """One response under way on a socket, from the client message that asked for it
    (or the server's announcement of one it started) to its final event."""

    hold: str
    """The id its estimate is reserved under (governance's), unique on the socket."""
    create: bytes
    """The message that asked for it (``response.create``, ``response.steer``; empty for
    a response the server started), for an estimate when no usable usage is reported."""
    created_at: float
    lane: str = ""
    """A Responses socket's lane (the create's ``stream_id``; "" by default)."""
    steers: str | None = None
    """For a ``response.steer``: the id of the response it steers (its successor is this
    turn's response)."""
    event_id: str | None = None
    """A Realtime create's ``event_id``: an ``error`` naming it ends the turn."""
    response_id: str | None = None
    """Set when the server announces the response (``response.created``)."""
    model: str | None = None
    first_byte_at: float | None = None
    reader: OpenAIReader | None = None
    """A Responses turn's events so far (its text, for an estimate if the socket closes
    before the final event)."""

    @property
    def started(self) -> bool:
        return self.response_id is not None


@dataclass(slots=True)
class Socket:
    """One open metered WebSocket: who opened it, its kind and its turns under way."""

    flow: http.HTTPFlow
    provider: MeteredProvider
    identity: Identity
    request_id: str | None = None
    turns: list[Turn] = field(default_factory=list)
    """The responses under way, oldest first."""
    made: int = 0
    """Turns made so far: names their holds."""
    metered: dict[str, None] = field(default_factory=dict)
    ended: dict[str, None] = field(default_factory=dict)
    """The ids of responses whose turn ended unmetered (an error), the latest
    :data:`RECENT_IDS`."""
    """The ids of the responses metered on this socket, the latest :data:`RECENT_IDS`
    (a repeated final event bills once, even after another response's)."""
    laned: bool = False
    """A create named a lane (``stream_id``): server events are read for theirs."""
    model: str | None = None
    """The model of the latest response announced (a steer's successor's, at worst)."""
    session: RealtimeSession | None = None
    """A Realtime session's models (None: not a Realtime session)."""
    live: LiveSession | None = None
    """A Gemini Live session's model (None: not a Live session)."""
    created_at: float | None = None
    """A Gemini Live turn's start (its turns are the server's, one at a time)."""
    first_byte_at: float | None = None

    def new_turn(self, flow_id: str, create: bytes, **fields: Any) -> Turn:
        self.made += 1
        return Turn(f"{flow_id}/{self.made}", create, time.time(), **fields)

    def by_response(self, response_id: Any) -> Turn | None:
        if isinstance(response_id, str):
            for turn in self.turns:
                if turn.response_id == response_id:
                    return turn
        return None

    def first_waiting(self, lane: str | None) -> Turn | None:
        """The oldest turn not yet announced by the server (in ``lane``; None: any)."""
        for turn in self.turns:
            if not turn.started and (lane is None or turn.lane == lane):
                return turn
        return None

    def stopped_by_error(self, lane: str | None, running: bool) -> Turn | None:
        """The turn an ``error`` event ends on ``lane`` (None: any): the response under
        way when the error may be about it (``running``: on its lane, or the provider's
        own failure), else the oldest create waiting, which the provider refused."""
        return (self.current(lane) if running else None) or self.first_waiting(lane)

    def current(self, lane: str | None) -> Turn | None:
        """The response the server is answering in ``lane`` (None: any): its oldest
        announced turn."""
        for turn in self.turns:
            if turn.started and (lane is None or turn.lane == lane):
                return turn
        return None


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
            flow, provider, identity, request_id=request_id, session=session, live=live
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
        """Meter a server's final event; check a client's turn. A turn that must wait
        for governance's first read of the store (a proxy just started) waits off the
        event loop: the hook then returns a coroutine for mitmproxy."""
        socket = self._open.get(flow.id)
        if socket is None or flow.websocket is None or not flow.websocket.messages:
            return None
        messages = flow.websocket.messages
        message = messages[-1]
        if len(messages) > 1:  # mitmproxy keeps every message until the socket closes
            del messages[:-1]
        if message.injected:  # the meter's own (a refusal's error event, a cancel)
            return None
        if socket.live is not None:
            geminilive.on_message(self, flow, socket, socket.live, message)
            return None
        if message.from_client:
            consumer = socket.identity.consumer
            asks = (
                realtime.client_turn(socket, flow.id, message.content)
                if socket.session is not None
                else responsesws.client_turn(socket, flow.id, message.content)
            )
            if asks is None:
                return None
            if consumer is not None and self.governance.awaits_first_read(consumer.name):
                return self._turn_after_first_read(flow, socket, message, asks)
            self._client_turn(flow, socket, message, asks)
            return None
        if socket.session is not None:
            realtime.on_server_message(self, flow, socket, socket.session, message.content)
        else:
            responsesws.on_server_message(self, flow, socket, message.content)
        return None

    async def _turn_after_first_read(
        self, flow: http.HTTPFlow, socket: Socket, message: WebSocketMessage, asks: Turn
    ) -> None:
        await self.governance.first_read()
        self._client_turn(flow, socket, message, asks)

    def _client_turn(
        self, flow: http.HTTPFlow, socket: Socket, message: WebSocketMessage, turn: Turn
    ) -> None:
        """A client's message that starts a response: checked against the limits (its
        estimate reserved under the turn's hold), dropped if refused."""
        turn.created_at = time.time()
        refusal = self.check(flow, socket, turn)
        if refusal is not None:
            message.drop()
            self.refuse(flow, socket, refusal, turn)
            return
        socket.turns.append(turn)

    def stop(self) -> None:
        """The proxy stops: every open socket ends as if it closed (its responses under
        way metered as cut; before, they were not metered at all)."""
        for socket in list(self._open.values()):
            self.end(socket.flow)

    def end(self, flow: http.HTTPFlow) -> None:
        """The socket closed: a Responses response under way (the first turn of each
        lane: a lane answers one at a time) is estimated from its request and the text
        seen, as a cut stream is (the provider had the request, and may have answered
        part of it); the other turns' holds are freed."""
        socket = self._open.pop(flow.id, None)
        if socket is None:
            return
        lanes: set[str] = set()
        for turn in list(socket.turns):
            first_of_lane = turn.lane not in lanes and turn.steers is None
            lanes.add(turn.lane)
            if socket.session is None and (turn.started or first_of_lane):
                self.meter(flow, socket, turn, None, None, cut=True)
            else:
                self.turn_ended(socket, turn)

    def check(
        self, flow: http.HTTPFlow, socket: Socket, turn: Turn, asked: Estimate | None = None
    ) -> Refusal | None:
        """The consumer's limits for one turn (its request, ``turn.create``; ``asked``:
        what it may cost when the request does not say, a Realtime session's): a
        refusal, or None (admitted, its estimate reserved under ``turn.hold``, or not
        governed)."""
        consumer = socket.identity.consumer
        if consumer is None:
            return None
        provider = socket.provider
        if asked is None and socket.session is not None:
            asked = realtime.turn_estimate(socket.session, turn.create)
        elif asked is None and turn.steers is not None:
            asked = responsesws.steer_estimate(socket, turn)
        create = turn.create
        verdict = self.governance.check(
            consumer.name,
            provider.flavor,
            provider.name,
            flow,
            lambda: create,
            asked,
            hold=turn.hold,
        )
        return verdict if isinstance(verdict, Refusal) else None

    def refuse(self, flow: http.HTTPFlow, socket: Socket, refusal: Refusal, turn: Turn) -> None:
        """Answer a refused turn on the socket (in its lane) and record it (zero tokens,
        its reason)."""
        provider = socket.provider
        status, body = errors.error_body(provider.flavor, refusal.kind, refusal.message)  # type: ignore[arg-type]
        error = {"type": "error", "status": status, **jsoncodec.loads(body)}
        if turn.lane:
            error["stream_id"] = turn.lane
        if socket.session is not None:  # Realtime's error events carry an id of their own
            error["event_id"] = f"event_meterline_{uuid.uuid4().hex[:16]}"
        ctx.master.commands.call("inject.websocket", flow, True, json.dumps(error).encode(), True)
        consumer = socket.identity.consumer
        exchange = self.exchange(flow, socket, status, turn)
        event = events.build_event(exchange, Usage(model=turn_model(socket, turn)), self.proxy_id)
        event["reason"] = refusal.reason
        log.info(
            "meterline: %s: %s WebSocket turn of %s refused: %s",
            flow.id,
            provider.name,
            consumer.name if consumer else None,
            refusal.reason,
        )
        self.record(event)

    def exchange(
        self, flow: http.HTTPFlow, socket: Socket, status: int | None, turn: Turn | None = None
    ) -> events.Exchange:
        """An event's exchange, timed by ``turn`` (else by the socket's Live turn)."""
        consumer = socket.identity.consumer
        t_request: float | None
        if turn is not None:
            t_request, t_first_byte = turn.created_at, turn.first_byte_at
        else:
            t_request, t_first_byte = socket.created_at, socket.first_byte_at
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
            t_request=t_request,
            t_first_byte=t_first_byte,
            t_done=time.time(),
        )

    def response_ended(
        self, flow: http.HTTPFlow, socket: Socket, response: dict[str, Any], lane: str = ""
    ) -> None:
        """A response's final object: metered once (a repeated final event bills once),
        with the turn that asked for it (by its id; else the lane's oldest)."""
        response_id = response.get("id")
        if isinstance(response_id, str):
            if response_id in socket.metered:
                return
            socket.metered[response_id] = None
            if len(socket.metered) > RECENT_IDS:
                del socket.metered[next(iter(socket.metered))]
        turn = socket.by_response(response_id)
        if turn is None and response_id not in socket.ended:
            turn = socket.current(lane) or socket.first_waiting(lane)
        if turn is None:  # a response the meter saw no start of: metered all the same
            turn = socket.new_turn(flow.id, b"", lane=lane)
            socket.turns.append(turn)
        self.meter(flow, socket, turn, response, None)

    def meter(
        self,
        flow: http.HTTPFlow,
        socket: Socket,
        turn: Turn,
        response: dict[str, Any] | None,
        problem: str | None,
        cut: bool = False,
    ) -> None:
        """One event for ``turn``: from ``response``'s usage, or estimated (``problem``
        says why there is no readable response; ``cut``: the socket closed mid-turn, from
        what the turn showed); the turn's hold is freed."""
        reader = turn.reader if cut and turn.reader is not None else OpenAIReader([])
        if response is not None:
            reader.on_object(response)
        flavor = socket.provider.flavor
        create = turn.create
        settled = settle(
            flavor,
            reader.usage(),
            reader.seen(),
            status_code=200,
            cut=cut,
            request_model=lambda: turn_model(socket, turn),
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
        exchange = self.exchange(flow, socket, settled.status, turn)
        rows = events.build_events(exchange, settled.usage, self.proxy_id)
        if turn in socket.turns:
            socket.turns.remove(turn)
        self.count_and_record(turn.hold, rows)

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
        ``apart``: the usage is not a turn's (a transcription), counted under that key
        and timed at this moment."""
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

    def count_and_record(self, hold: str, rows: list[dict[str, Any]]) -> None:
        """Count a turn's events against the consumer's limits (the hold kept under
        ``hold`` freed) and record them, whatever governance does: the provider bills
        them."""
        try:
            self.governance.finish(hold, rows)
        finally:
            for event in rows:
                self.record(event)

    def turn_ended(self, socket: Socket, turn: Turn) -> None:
        """A turn that ended with nothing to meter: its hold on the limits is freed (it
        was kept until the socket closed, refusing the consumer's other calls meanwhile).
        A final event of its response coming after all is metered on its own, not with
        a turn still waiting (whose hold it would free)."""
        if turn in socket.turns:
            socket.turns.remove(turn)
        if turn.response_id is not None:
            socket.ended[turn.response_id] = None
            if len(socket.ended) > RECENT_IDS:
                del socket.ended[next(iter(socket.ended))]
        self.governance.finish(turn.hold, None)


def turn_model(socket: Socket, turn: Turn) -> str | None:
    """The model of a turn: a Realtime session's, the one the server announced, or the
    one its ``response.create`` names."""
    if socket.session is not None:
        return socket.session.model
    if turn.model:
        return turn.model
    return _create_model(turn.create)


def _create_model(create: bytes) -> str | None:
    try:
        data = jsoncodec.loads(create) if create else None
    except ValueError:
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) else None
