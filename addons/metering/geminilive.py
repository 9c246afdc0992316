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

This module holds that reading; :mod:`addons.metering.websocket` meters the socket.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from addons.metering import jsoncodec
from addons.metering.providers import normalise_path

_LIVE_SOCKET = re.compile(r"[./]BidiGenerateContent(?:Constrained)?/?$")
#: A server message that carries usage (the audio chunks, most of a session's bytes, do not).
USAGE = b'"usageMetadata"'
#: The client's first message.
SETUP = b'"setup"'


def is_live_socket(flavor: str, path: str) -> bool:
    """Whether a WebSocket on ``path`` of a provider of ``flavor`` is a Gemini Live session."""
    if flavor != "gemini":
        return False
    return _LIVE_SOCKET.search(normalise_path(path).partition("?")[0]) is not None


@dataclass(slots=True)
class LiveSession:
    """The model a Live session's ``setup`` named."""

    model: str | None = None

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


def usage_metadata(message: Any) -> dict[str, Any] | None:
    """A server message's ``usageMetadata`` object, or None."""
    meta = message.get("usageMetadata") if isinstance(message, dict) else None
    return meta if isinstance(meta, dict) else None
