"""Google Gemini ``generateContent`` / ``streamGenerateContent`` (Gemini API and Vertex AI).

Token mapping (see docs/token-model.md): ``promptTokenCount`` includes
``cachedContentTokenCount``, so ``input = promptTokenCount - cachedContentTokenCount +
toolUsePromptTokenCount``, ``cached_input = cachedContentTokenCount``; Gemini reports no
cache writes in these calls; ``output = candidatesTokenCount + thoughtsTokenCount``
(thinking is billed as output), ``reasoning = thoughtsTokenCount``.

Audio is billed at its own rate (Gemini 2.5 Flash: $1.00 per million input tokens
against $0.30 for text, image and video), so it is counted apart from the per-modality
lists (``ModalityTokenCount``: ``{"modality": "AUDIO", "tokenCount": n}``):
``audio_input`` = the ``AUDIO`` entry of ``promptTokensDetails`` less that of
``cacheTokensDetails``, taken out of input; that cached audio is ``cached_audio_input``,
taken out of ``cached_input``;
``audio_output`` = the ``AUDIO`` entry of ``candidatesTokensDetails`` (native-audio and
TTS models), taken out of output, so ``reasoning`` stays a share of the text output.

The Live API (a WebSocket, :mod:`addons.metering.geminilive`) reports the same
``usageMetadata`` per turn with the output named ``responseTokenCount`` and
``responseTokensDetails``.

Streamed chunks (``alt=sse``, or a JSON array streamed element by element) each carry the
cumulative ``usageMetadata`` so far: the last one wins. The model is ``modelVersion``
when the body has it, else the model named in the request path.
"""

from __future__ import annotations

import json
import re
from typing import Any

from addons.metering.counts import CountReader, check_consistency
from addons.metering.extract.framing import (
    LazyText,
    as_dict,
    as_list,
    has_value,
    loads,
    note,
)
from addons.metering.sse import SSEEvent
from addons.metering.usage import Seen, Usage

_MODEL_IN_PATH = re.compile(r"/(?:models|tunedModels)/([^/:?#]+)")


def model_from_path(path: str) -> str | None:
    """``/v1beta/models/gemini-2.5-flash:generateContent`` -> ``gemini-2.5-flash``."""
    match = _MODEL_IN_PATH.search(path)
    return match.group(1) if match else None


def _audio(c: CountReader, meta: dict[str, Any], key: str) -> int:
    """The ``AUDIO`` tokens of a ``ModalityTokenCount`` list (0 when not listed)."""
    entries = (as_dict(e) for e in as_list(meta.get(key)))
    return sum(c.get(e, "tokenCount") or 0 for e in entries if e.get("modality") == "AUDIO")


def map_usage(meta: dict[str, Any]) -> Usage:
    """One ``usageMetadata``; unusable counts set :attr:`Usage.invalid`.

    Gemini leaves out a count that is zero (a prompt-only answer has no
    ``candidatesTokenCount``), so every field may be missing; ``null`` is unusable.
    """
    c = CountReader()
    prompt = c.get(meta, "promptTokenCount", main=True) or 0
    cached = c.get(meta, "cachedContentTokenCount", main=True) or 0
    tool_prompt = c.get(meta, "toolUsePromptTokenCount", main=True) or 0
    # The Live API names the output ``responseTokenCount`` (and its modalities
    # ``responseTokensDetails``); generateContent ``candidatesTokenCount``.
    live = "candidatesTokenCount" not in meta and "responseTokenCount" in meta
    out_count, out_details = (
        ("responseTokenCount", "responseTokensDetails")
        if live
        else ("candidatesTokenCount", "candidatesTokensDetails")
    )
    candidates = c.get(meta, out_count, main=True) or 0
    thoughts = c.get(meta, "thoughtsTokenCount", main=True) or 0
    audio, cached_audio = (
        _audio(c, meta, "promptTokensDetails"),
        _audio(c, meta, "cacheTokensDetails"),
    )
    audio_out = _audio(c, meta, out_details)
    usage = Usage(
        input=max(prompt - cached, 0) - (audio - cached_audio) + tool_prompt,
        cached_input=cached - cached_audio,
        audio_input=audio - cached_audio,
        cached_audio_input=cached_audio,
        output=candidates - audio_out + thoughts,
        audio_output=audio_out,
        reasoning=thoughts,
    )
    usage.invalid = c.problem()
    if usage.invalid is None and cached > prompt:
        usage.invalid = f"cachedContentTokenCount {cached} > promptTokenCount {prompt}"
    if usage.invalid is None and (
        cached_audio > min(audio, cached) or audio - cached_audio > prompt - cached
    ):
        usage.invalid = (
            f"AUDIO prompt tokens {audio} (cached {cached_audio}) do not fit in "
            f"promptTokenCount {prompt} (cached {cached})"
        )
    if usage.invalid is None and audio_out > candidates:
        usage.invalid = f"AUDIO candidates tokens {audio_out} > candidatesTokenCount {candidates}"
    if usage.invalid is None:
        usage.invalid = check_consistency(usage)
    return usage


def chunk_text(obj: Any) -> str:
    out: list[str] = []
    for candidate in as_list(as_dict(obj).get("candidates")):
        for part in as_list(as_dict(as_dict(candidate).get("content")).get("parts")):
            part = as_dict(part)
            if isinstance(part.get("text"), str):
                out.append(part["text"])
            if "functionCall" in part:
                out.append(json.dumps(part["functionCall"], ensure_ascii=False))
    return "".join(out)


def _is_final(obj: dict[str, Any]) -> bool:
    """A chunk that ends the response: a candidate finished, or the prompt was blocked."""
    if as_dict(obj.get("promptFeedback")).get("blockReason"):
        return True
    return any(as_dict(c).get("finishReason") for c in as_list(obj.get("candidates")))


class GeminiReader:
    def __init__(self, problems: list[str], path: str) -> None:
        self.problems = problems
        self._path_model = model_from_path(path)
        self._stream_path = ":streamGenerateContent" in path
        self._meta: dict[str, Any] | None = None
        self._model: str | None = None
        self._id: str | None = None
        self._finished = False  # a candidate with a finishReason was seen
        self._streamed = False
        self._text = LazyText(chunk_text, problems, "stream chunk")
        # SSE: raw data of the usage-bearing chunks, newest last; decoded at the end.
        self._usage_raw: list[str] = []

    def on_object(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            note(self.problems, f"expected a JSON object, got {type(obj).__name__}")
            return
        if "error" in obj:
            note(self.problems, f"provider error: {json.dumps(obj['error'])[:120]}")
        if isinstance(obj.get("usageMetadata"), dict):
            self._meta = obj["usageMetadata"]
        if isinstance(obj.get("modelVersion"), str) and obj["modelVersion"]:
            self._model = obj["modelVersion"]
        if isinstance(obj.get("responseId"), str) and obj["responseId"]:
            self._id = obj["responseId"]
        if _is_final(obj):
            self._finished = True
        self._text.add_obj(obj)

    def on_event(self, event: SSEEvent) -> None:
        data = event.data
        if not self._streamed:
            self._streamed = True
            obj = loads(data, self.problems, "stream chunk")  # the first: ids, early error
            if obj is not None:
                self.on_object(obj)
            return
        if has_value(data, '"usageMetadata"'):
            self._usage_raw.append(data)
            if len(self._usage_raw) > 8:  # only the newest parseable one matters
                del self._usage_raw[:-8]
        if '"finishReason"' in data or '"blockReason"' in data:
            self._finished = True
        self._text.add_raw(data)

    def _settle(self) -> None:
        """Decode the newest parseable usage-bearing SSE chunk (older ones are superseded)."""
        while self._usage_raw:
            raw = self._usage_raw.pop()
            obj = loads(raw, self.problems, "usage chunk")
            if isinstance(obj, dict) and isinstance(obj.get("usageMetadata"), dict):
                self._usage_raw.clear()
                self._meta = obj["usageMetadata"]
                self._model = obj.get("modelVersion") or self._model
                self._id = obj.get("responseId") or self._id
                self._finished = self._finished or _is_final(obj)

    def usage(self) -> Usage | None:
        self._settle()
        if self._meta is None:
            return None
        usage = map_usage(self._meta)
        usage.model = self._model if isinstance(self._model, str) else self._path_model
        usage.response_id = self._id if isinstance(self._id, str) else None
        usage.partial = (self._streamed or self._stream_path) and not self._finished
        return usage

    def text(self) -> str:
        return self._text.text()

    def seen(self) -> Seen:
        self._settle()
        model = self._model if isinstance(self._model, str) else self._path_model
        return Seen(model, self._id if isinstance(self._id, str) else None)
