"""What the proxy reads from a Gemini Live session (``BidiGenerateContent`` upgraded).

A Live session is one WebSocket (Gemini API:
``/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent``, or
``...BidiGenerateContentConstrained`` with an ephemeral token; Vertex AI:
``/ws/google.cloud.aiplatform.v1.LlmBidiService/BidiGenerateContent``). The client's first
message is ``setup``, naming the model; audio, text and tool results follow, and the
server answers turn by turn. A server message may carry ``usageMetadata`` beside its
content: the usage of the model's turn (the prompt, which includes the conversation so
far, and the response), one report per turn, each billed on its own (a live probe of
three turns reported prompts of 143, 181 and 224 tokens: the history is re-read, and
billed, every turn). The figures are mapped by the ``generateContent`` reader
(:func:`~addons.metering.extract.gemini.map_usage`; the Live API names the output
``responseTokenCount`` and ``responseTokensDetails``). Server messages are JSON, sent as
text or binary frames.

This module reads a session's messages and meters its turns, through the socket meter
(:class:`~addons.metering.websocket.SocketMeter`). A session whose turns take the consumer
past a hard limit is ended for the model: the proxy forwards none of the client's
messages from then on (no new input, so no new turn is billed), tells the client with
the protocol's own notice that the session is ending (``goAway``, ``timeLeft`` 0 s) and
stores the refusal. The turn in progress when the limit was crossed is metered.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mitmproxy import ctx, http
from mitmproxy.websocket import WebSocketMessage

from addons.metering import errors, events, jsoncodec
from addons.metering.extract import gemini
from addons.metering.models import normalise_model
from addons.metering.providers import normalise_path
from addons.metering.usage import Usage
from meterline.entitlements import Refusal

if TYPE_CHECKING:
    from addons.metering.websocket import Socket, SocketMeter

log = logging.getLogger("meterline.proxy")

_LIVE_SOCKET = re.compile(r"[./]BidiGenerateContent(?:Constrained)?/?$")
#: A server message that carries usage (the audio chunks, most of a session's bytes, do not).
USAGE = b'"usageMetadata"'
#: The client's first message.
SETUP = b'"setup"'


def is_live_socket(flavor: str, path: str) -> bool:
    """Whether a WebSocket on ``path`` of a provider of ``flavor`` is a Gemini Live session."""
    return flavor == "gemini" and _LIVE_SOCKET.search(normalise_path(path)) is not None


@dataclass(slots=True)
class LiveSession:
    """The model a Live session's ``setup`` named, and whether the limits ended it."""

    model: str | None = None
    greeted: bool = False
    """The client's first message (the protocol's ``setup``) has been read."""
    ended: bool = False
    """The consumer's limits refused the session after a turn: the client's messages are
    no longer forwarded."""

    def take_setup(self, content: bytes) -> None:
        """A client message: the model of a ``setup`` (other messages leave it)."""
        try:
            message = jsoncodec.loads(content)
        except ValueError:
            return
        setup = message.get("setup") if isinstance(message, dict) else None
        model = setup.get("model") if isinstance(setup, dict) else None
        if isinstance(model, str) and model:
            self.model = model


#: What the client is told when the limits end its session: the Live API's notice that
#: the server is about to close the connection, with no time left.
GO_AWAY = b'{"goAway": {"timeLeft": "0s"}}'

#: The model a refused ``setup`` is sent upstream with: the provider closes the session
#: (1008, "models/... is not found"), the only way the protocol has to end one, and its
#: reason names the refusal.
REFUSED_MODEL = "models/refused-by-meterline-plan-does-not-include-this-model"


def _check_model(
    meter: SocketMeter,
    flow: http.HTTPFlow,
    socket: Socket,
    live: LiveSession,
    setup: WebSocketMessage,
) -> None:
    """The ``setup``'s model against the consumer's plan (the upgrade could not know
    it). A model the plan does not include is refused: the setup goes upstream naming
    :data:`REFUSED_MODEL` instead, so no session starts and nothing is billed, and the
    refusal is stored. A Live session has no error message nor a way for the proxy to
    close it: the provider's own close is the answer the client gets."""
    consumer = socket.identity.consumer
    if consumer is None or meter.governance.awaits_first_read(consumer.name):
        return
    refused = _session_refusal(meter, flow, socket, live)
    if refused is None:
        return
    setup.content = json.dumps({"setup": {"model": REFUSED_MODEL}}).encode()
    _record_refusal(meter, flow, socket, *refused, "refused")


def _session_refusal(
    meter: SocketMeter, flow: http.HTTPFlow, socket: Socket, live: LiveSession
) -> tuple[str | None, Refusal] | None:
    """The session's model and the limits' refusal of it, or None (admitted)."""
    consumer = socket.identity.consumer
    assert consumer is not None
    provider = socket.provider
    model = normalise_model(provider.flavor, live.model)
    refusal = meter.governance.check_session(
        consumer.name, provider.flavor, provider.name, flow, model
    )
    if refusal is None or refusal.retry or refusal.kind == "unavailable":
        # Passing: the limit is held by calls in flight, or the store is being read (or
        # cannot be): a session is not ended on that (the calls settle in moments, below
        # what they hold), only on a limit reached or a model not granted.
        return None
    return model, refusal


def _end_past_limits(
    meter: SocketMeter, flow: http.HTTPFlow, socket: Socket, live: LiveSession
) -> None:
    """After a turn is counted: a session the consumer's limits now refuse (a hard limit
    reached, prepaid credit used up) is ended for the model (see the module docstring).
    Before, it ran on past the limit until the client closed it."""
    if socket.identity.consumer is None or live.ended:
        return
    refused = _session_refusal(meter, flow, socket, live)
    if refused is None:
        return
    live.ended = True
    ctx.master.commands.call("inject.websocket", flow, True, GO_AWAY, True)
    _record_refusal(meter, flow, socket, *refused, "ended")


def _record_refusal(
    meter: SocketMeter,
    flow: http.HTTPFlow,
    socket: Socket,
    model: str | None,
    refusal: Refusal,
    what: str,
) -> None:
    """Log a refused session (``what``: refused at its setup, or ended after a turn) and
    store the refusal: no tokens, its reason and the status the provider's shape gives."""
    consumer = socket.identity.consumer
    provider = socket.provider
    log.info(
        "meterline: %s: %s Live session of %s %s: %s",
        flow.id,
        provider.name,
        consumer.name if consumer else None,
        what,
        refusal.reason,
    )
    status, _ = errors.error_body(provider.flavor, refusal.kind, refusal.message)  # type: ignore[arg-type]
    event = events.build_event(
        meter.exchange(flow, socket, status), Usage(model=model), meter.proxy_id
    )
    event["reason"] = refusal.reason
    meter.record(event)


def usage_metadata(message: Any) -> dict[str, Any] | None:
    """A server message's ``usageMetadata`` object, or None."""
    meta = message.get("usageMetadata") if isinstance(message, dict) else None
    return meta if isinstance(meta, dict) else None


def on_message(
    meter: SocketMeter,
    flow: http.HTTPFlow,
    socket: Socket,
    live: LiveSession,
    message: WebSocketMessage,
) -> None:
    """A Live session's message (text or binary): the client's ``setup`` names the
    model (checked against the plan); a server message with ``usageMetadata`` is one
    turn's event."""
    now = time.time()
    content = message.content
    if message.from_client:
        if live.ended:
            message.drop()
            return
        # The first message is read whatever its bytes say: ``{"\u0073etup": ...}`` is a
        # setup to the provider too (before, it skipped the plan's model check).
        if live.model is None and (SETUP in content or not live.greeted):
            live.greeted = True
            live.take_setup(content)
            if live.model is not None:
                _check_model(meter, flow, socket, live, message)
        if socket.created_at is None:
            socket.created_at = now  # the turn's input starts
        return
    if socket.first_byte_at is None:
        socket.first_byte_at = now
    if USAGE not in content:
        return
    try:
        meta = usage_metadata(jsoncodec.loads(content))
    except ValueError:
        meta = None
    provider = socket.provider
    if meta is None:
        if meter.once.first(provider.name, "unreadable usageMetadata"):
            log.warning(
                "meterline: %s: %s Live message naming usageMetadata cannot be read: not "
                "metered; further ones are not logged",
                flow.id,
                provider.name,
            )
        return
    meter.reported(flow, socket, gemini.map_usage(meta), live.model, "Live usage")
    socket.created_at = socket.first_byte_at = None  # the next turn starts afresh
    _end_past_limits(meter, flow, socket, live)
