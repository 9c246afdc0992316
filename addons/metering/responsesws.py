"""What the proxy reads from a Responses API WebSocket (``GET /v1/responses`` upgraded).

The client sends ``response.create`` messages (a ``POST /v1/responses`` body plus
``"type"``), each optionally on a lane (``stream_id``): creates on one lane are answered
first in first out, lanes side by side, and every server event of a response echoes its
lane. A client may also steer a response under way (``response.steer``, naming it in
``previous_response_id``): the server then ends it early (``response.incomplete``,
``steered``) and starts a successor on the same lane by itself (``response.created``
with no create before it), or reports the steer ``failed``, or ``pending`` (held for a
create the client sends itself). Each response ends with ``response.completed``,
``response.incomplete`` or ``response.failed``, its final ``response`` object carrying
the usage.

So every create and every steer is a turn checked against the limits before it is
forwarded (refused: dropped and answered with an ``error`` event on its lane), and
holds its own estimate until its response ends: the server's ``response.created``
binds the oldest waiting turn of its lane to the response id, the final event meters
it. A response the server starts with no turn waiting is checked as it is announced
(the protocol has no cancel: past the limits it runs and is metered, and logged).
Before, a socket held one estimate at most: ten creates sent together, eight lanes,
or eight steers all passed a hard limit of two responses' worth.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any

from mitmproxy import http

from addons.metering import jsoncodec
from addons.metering.extract.framing import as_dict
from addons.metering.extract.openai import OpenAIReader
from addons.metering.providers import normalise_path
from addons.metering.reserve import Estimate, estimate_turn
from addons.metering.sse import SSEEvent

if TYPE_CHECKING:
    from addons.metering.websocket import Socket, SocketMeter, Turn

log = logging.getLogger("meterline.proxy")

#: The path of a Responses WebSocket: ``/v1/responses`` (Azure: ``/openai/v1/responses``).
_RESPONSES_SOCKET = re.compile(r"/responses/?$")
#: Server events that end a response and carry its final usage.
_FINAL = re.compile(rb'"response\.(?:completed|incomplete|failed)"')
_FINAL_TYPES = frozenset({"response.completed", "response.incomplete", "response.failed"})
#: The events of a response under way the meter reads: its start (id, model, lane) and
#: its text (for an estimate if the socket closes before the final event).
_TURN_EVENT = re.compile(
    rb'"type"\s*:\s*"(response\.(?:created|queued)|response\.(?:output_text|refusal'
    rb'|function_call_arguments|reasoning_text|reasoning_summary_text)\.delta)"'
)
_STARTS = frozenset({"response.created", "response.queued"})
#: A server ``error`` event: the turn ended without a response (``previous_response_not_found``).
_ERROR = re.compile(rb'"type"\s*:\s*"error"')
#: A steer that will start no successor of its own.
_STEER_ENDED = re.compile(rb'"type"\s*:\s*"response\.steer\.(?:failed|pending)"')
#: The lane a server event echoes (a JSON string cannot hold this unescaped).
_LANE = re.compile(rb'"stream_id"\s*:\s*"((?:[^"\\]|\\.)*)"')
CREATE = "response.create"
STEER = "response.steer"


def is_responses_socket(flavor: str, path: str) -> bool:
    """Whether a WebSocket on ``path`` of a provider of ``flavor`` is the Responses API's."""
    return flavor == "openai" and _RESPONSES_SOCKET.search(normalise_path(path)) is not None


def client_turn(socket: Socket, flow_id: str, content: bytes) -> Turn | None:
    """The turn a client message asks for: a ``response.create`` (on its lane) or a
    ``response.steer`` (the successor of the response it steers), else None. Every
    client message is read as JSON: ``"response\\u002ecreate"`` or a binary frame is a
    create to the provider too (and passed the limits unchecked before it was read so)."""
    try:
        obj = jsoncodec.loads(content)
    except ValueError:
        return None
    kind = obj.get("type") if isinstance(obj, dict) else None
    if kind == CREATE:
        lane = obj.get("stream_id")
        lane = lane if isinstance(lane, str) else ""
        socket.laned = socket.laned or bool(lane)
        model = obj.get("model")
        turn = socket.new_turn(flow_id, content, lane=lane)
        turn.model = model if isinstance(model, str) and model else None
        return turn
    if kind == STEER:
        parent = obj.get("previous_response_id")
        parent = parent if isinstance(parent, str) else ""
        target = socket.by_response(parent)
        turn = socket.new_turn(flow_id, content, steers=parent)
        if target is not None:
            turn.lane, turn.model = target.lane, target.model
        return turn
    return None


def steer_estimate(socket: Socket, turn: Turn) -> Estimate:
    """A steer's successor inherits the steered response's settings: its model (the
    target's, else the socket's latest) and output bound, the steer's input added."""
    model = turn.model or _latest_model(socket)
    target = socket.by_response(turn.steers)
    bound = _bound_of(target.create) if target is not None else None
    return estimate_turn(model or "", turn.create, bound)


def on_server_message(
    meter: SocketMeter, flow: http.HTTPFlow, socket: Socket, content: bytes
) -> None:
    """A server message (text or binary frame): a final event is metered; a response's
    start binds it to its turn; its text is kept; an error or a steer that starts
    nothing ends the turn waiting for it."""
    if _FINAL.search(content):
        _final(meter, flow, socket, content)
    elif seen := _TURN_EVENT.search(content):
        kind = seen[1].decode()
        if kind in _STARTS:
            _started(meter, flow, socket, kind, content)
        elif socket.turns:
            turn = socket.current(_lane(socket, content))
            if turn is not None and turn.reader is not None:
                turn.reader.on_event(SSEEvent(kind, content.decode("utf-8", "replace")))
    elif not socket.turns:
        return
    elif b'"error"' in content and _ERROR.search(content):
        _error(meter, socket, content)
    elif _STEER_ENDED.search(content):
        _steer_ended(meter, socket, content)


def _started(
    meter: SocketMeter, flow: http.HTTPFlow, socket: Socket, kind: str, content: bytes
) -> None:
    """``response.created`` (or ``response.queued``): the response binds the oldest
    turn waiting on its lane; one the server started by itself is checked here."""
    obj = jsoncodec.event_of(content, kind)
    if obj is None:
        return  # unreadable, or a text delta quoting an event's name
    response = as_dict(obj.get("response"))
    response_id = response.get("id")
    if socket.by_response(response_id) is not None:
        return  # queued, now created
    lane = obj.get("stream_id")
    lane = lane if isinstance(lane, str) else ""
    turn = socket.first_waiting(lane)
    if turn is None:
        turn = socket.new_turn(flow.id, b"", lane=lane)
        socket.turns.append(turn)
        _server_turn(meter, flow, socket, turn, response)
    turn.response_id = response_id if isinstance(response_id, str) else f"?{turn.hold}"
    model = response.get("model")
    if isinstance(model, str) and model:
        turn.model = socket.model = model
    turn.first_byte_at = time.time()
    turn.reader = OpenAIReader([])
    turn.reader.on_event(SSEEvent(kind, content.decode("utf-8", "replace")))
    if turn.steers:  # steers of one response start one successor together
        for other in [t for t in socket.turns if not t.started and t.steers == turn.steers]:
            meter.turn_ended(socket, other)


def _server_turn(
    meter: SocketMeter, flow: http.HTTPFlow, socket: Socket, turn: Turn, response: dict[str, Any]
) -> None:
    """A response no client message of the socket asked for (a steered response's
    successor whose steer the proxy did not see start it): its estimate is reserved if
    the limits admit it. The socket has no cancel, so one they refuse runs and is
    metered; that is logged once per provider."""
    consumer = socket.identity.consumer
    if consumer is None or meter.governance.awaits_first_read(consumer.name):
        return
    model = response.get("model")
    model = model if isinstance(model, str) and model else _latest_model(socket)
    asked = estimate_turn(model or "", b"", response.get("max_output_tokens"))
    refusal = meter.check(flow, socket, turn, asked)
    if refusal is not None and meter.once.first(socket.provider.name, "server response refused"):
        log.warning(
            "meterline: %s: %s started a response on the WebSocket of %s past its limits "
            "(%s); the socket has no cancel: it runs and is metered; further ones are not "
            "logged",
            flow.id,
            socket.provider.name,
            consumer.name,
            refusal.reason,
        )


def _final(meter: SocketMeter, flow: http.HTTPFlow, socket: Socket, content: bytes) -> None:
    try:
        obj = jsoncodec.loads(content)
    except ValueError as e:
        # Named a final event but unreadable (nested too deeply, cut): the oldest turn
        # under way is metered from its request's estimate, as a garbled HTTP body is.
        turn = next((t for t in socket.turns if t.started), None) or socket.first_waiting(None)
        if turn is not None:
            meter.meter(flow, socket, turn, None, f"unreadable final event: {e}")
        return
    if not isinstance(obj, dict) or obj.get("type") not in _FINAL_TYPES:
        return  # a text delta quoting an event's name
    lane = obj.get("stream_id")
    lane = lane if isinstance(lane, str) else ""
    response = obj.get("response")
    if not isinstance(response, dict):
        log.warning(
            "meterline: %s: %s WebSocket %s without a response object: not metered",
            flow.id,
            socket.provider.name,
            obj.get("type"),
        )
        turn = socket.current(lane) or socket.first_waiting(lane)
        if turn is not None:
            meter.turn_ended(socket, turn)
        return
    if obj["type"] == "response.failed" and not isinstance(response.get("usage"), dict):
        # failed with nothing reported: nothing billed
        turn = socket.by_response(response.get("id")) or socket.current(lane)
        if turn is not None:
            meter.turn_ended(socket, turn)
        return
    meter.response_ended(flow, socket, response, lane)


def _error(meter: SocketMeter, socket: Socket, content: bytes) -> None:
    """An ``error`` event ends a turn, nothing billed, its hold freed: on its lane
    (``stream_id``), the response under way (a lane answers first in first out), else
    the oldest create waiting (``previous_response_not_found``). One that names no lane
    ends the response under way when it is a server error, else the oldest create
    waiting: an error about another client message (``unknown_event_type``) leaves a
    response running, and billing, with its hold."""
    obj = jsoncodec.event_of(content, "error")
    if obj is None:
        return
    lane = obj.get("stream_id")
    lane = lane if isinstance(lane, str) else None
    turn = socket.stopped_by_error(lane, lane is not None or server_error(obj))
    if turn is not None:
        meter.turn_ended(socket, turn)


def server_error(event: dict[str, Any]) -> bool:
    """Whether an ``error`` event is the provider's own failure (a response under way
    stopped), not a refusal of something the client sent."""
    error = as_dict(event.get("error"))
    kinds = {error.get("type"), error.get("code")}
    status = event.get("status")
    return bool(kinds & _SERVER_ERRORS) or (isinstance(status, int) and status >= 500)


#: Error types and codes of a provider's own failure.
_SERVER_ERRORS = frozenset({"server_error", "internal_error", "api_error", "overloaded_error"})


def _steer_ended(meter: SocketMeter, socket: Socket, content: bytes) -> None:
    """``response.steer.failed`` (the steer's input was not taken: one steer ends) or
    ``response.steer.pending`` (it waits for a create the client will send, which is
    checked itself: every steer of that response ends)."""
    obj = jsoncodec.event_of(content, "response.steer.failed", "response.steer.pending")
    if obj is None:
        return
    parent = as_dict(obj.get("steer")).get("previous_response_id")
    waiting = [t for t in socket.turns if not t.started and t.steers == parent]
    if obj["type"] == "response.steer.failed":
        waiting = waiting[:1]
    for turn in waiting:
        meter.turn_ended(socket, turn)


def _lane(socket: Socket, content: bytes) -> str:
    """The lane a server event belongs to ("" when the socket uses none)."""
    if not socket.laned:
        return ""
    found = _LANE.search(content)
    if found is None:
        return ""
    try:
        lane = jsoncodec.loads(b'"' + found[1] + b'"')
    except ValueError:
        return ""
    return lane if isinstance(lane, str) else ""


def _latest_model(socket: Socket) -> str | None:
    for turn in reversed(socket.turns):
        if turn.model:
            return turn.model
    return socket.model


def _bound_of(create: bytes) -> Any:
    try:
        data = jsoncodec.loads(create) if create else None
    except ValueError:
        return None
    return data.get("max_output_tokens") if isinstance(data, dict) else None
