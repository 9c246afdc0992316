"""What the proxy reads from an OpenAI Realtime session (``GET /v1/realtime`` upgraded).

A Realtime session is one WebSocket: the client streams audio (or text) in, the server
answers with responses, each ended by a ``response.done`` event whose ``response.usage``
is what OpenAI bills for it (text, audio and image input, cached or not, text and audio
output: :func:`~addons.metering.extract.openai.map_usage` reads it). Responses are
created by the client (``response.create``) or by the server itself when its voice
activity detection hears the end of a turn, so a session bills without any client
message naming a response. The input transcription (``gpt-4o-transcribe``, ``whisper-1``)
runs on its own model and is billed apart: each
``conversation.item.input_audio_transcription.completed`` event carries its ``usage``,
in tokens or, for ``whisper-1``, in seconds of audio.

The events name no model: the session's model is the URL's (``?model=``; Azure's
``?deployment=``) until the server's ``session.created`` / ``session.updated`` says
otherwise, and the transcription model is the session's ``audio.input.transcription``
(``input_audio_transcription`` in the beta shape).

This module holds that reading; :mod:`addons.metering.websocket` meters the socket.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from addons.metering.extract.openai import map_usage
from addons.metering.providers import normalise_path
from addons.metering.usage import Usage

#: ``/v1/realtime`` (Azure: ``/openai/realtime``, ``/openai/v1/realtime``).
_REALTIME_SOCKET = re.compile(r"/realtime/?$")
#: Server events the meter reads (one search per server text message; the audio deltas,
#: most of a session's bytes, hold none of these names).
READ = re.compile(
    rb'"(?:response\.done|response\.created|session\.(?:created|updated)'
    rb'|conversation\.item\.input_audio_transcription\.completed)"'
)
DONE = "response.done"
CREATED = "response.created"
TRANSCRIBED = "conversation.item.input_audio_transcription.completed"
SESSION = frozenset({"session.created", "session.updated"})


def is_realtime_socket(flavor: str, path: str) -> bool:
    """Whether a WebSocket on ``path`` of a provider of ``flavor`` is a Realtime session."""
    if flavor != "openai":
        return False
    return _REALTIME_SOCKET.search(normalise_path(path).partition("?")[0]) is not None


@dataclass(slots=True)
class RealtimeSession:
    """What one session has said about its models, and the transcriptions billed."""

    model: str | None = None
    transcription_model: str | None = None
    transcribed: set[tuple[str, int]] = field(default_factory=set)
    """(item id, content index) of each transcription metered: a repeat bills once."""

    @classmethod
    def from_path(cls, path: str) -> RealtimeSession:
        """The model the upgrade asked for (``?model=``, Azure's ``?deployment=``)."""
        query = parse_qs(path.partition("?")[2])
        named = query.get("model") or query.get("deployment") or [""]
        return cls(model=named[0] or None)

    def take(self, event: dict[str, Any]) -> None:
        """A ``session.created`` / ``session.updated`` event: the models it names."""
        session = event.get("session")
        if not isinstance(session, dict):
            return
        model = session.get("model")
        if isinstance(model, str) and model:
            self.model = model
        audio_input = _dict(_dict(session.get("audio")).get("input"))
        for holder, key in ((audio_input, "transcription"), (session, "input_audio_transcription")):
            if key in holder:  # present: set or turned off (null)
                named = _dict(holder[key]).get("model")
                self.transcription_model = named if isinstance(named, str) and named else None


def transcription_usage(event: dict[str, Any]) -> tuple[tuple[str, int] | None, Usage | None, str]:
    """A transcription event's (item id, content index), its usage in tokens, and the
    kind of usage it reported (``tokens``, ``duration``: billed per second, not
    metered, or ``none``)."""
    item = event.get("item_id")
    index = event.get("content_index")
    key = (item, index if isinstance(index, int) else 0) if isinstance(item, str) else None
    usage = event.get("usage")
    if not isinstance(usage, dict):
        return key, None, "none"
    if usage.get("type") == "duration" or ("seconds" in usage and "input_tokens" not in usage):
        return key, None, "duration"
    return key, map_usage(usage), "tokens"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
