"""Anthropic Messages API (JSON and SSE).

Token mapping (see docs/token-model.md): Anthropic's ``input_tokens`` already excludes
cached tokens, so ``input = input_tokens``, ``cached_input = cache_read_input_tokens``,
``cache_write = cache_creation_input_tokens`` (or the sum of the ``cache_creation``
breakdown when only that is present) less the one-hour writes, which are
``cache_write_1h = cache_creation.ephemeral_1h_input_tokens`` (billed at 2x base input
against 1.25x for the 5-minute ones), ``output = output_tokens`` (thinking included),
``reasoning = output_tokens_details.thinking_tokens`` where the API reports it (newer
versions), else 0.

Streams: ``message_start`` carries ``message.usage`` (input and cache figures, a
placeholder output count) and ``message_delta`` carries the cumulative ``output_tokens``
and, in newer API versions, repeats or revises the input/cache figures. Each field takes
the latest non-null value, so nothing is ever added twice and ``message_delta``'s
revision wins, and the one-hour share goes with its total: a ``message_delta`` revising
``cache_creation_input_tokens`` without a ``cache_creation`` breakdown takes it from its
``message`` iterations when it lists them, else keeps the earlier share capped at the new
total. Only ``message_start``, ``message_delta`` and ``content_block_delta``
(kept raw, for estimates) are looked at. Usage from ``message_start`` alone is
``partial``.

Service tier: ``usage.service_tier`` (``standard``, ``priority``, ``batch``) of the
message, ``message_start``'s or ``message_delta``'s, the latest wins. So are the speed
the call ran at, ``usage.speed`` (``fast``, ``standard``: a fast-mode request that fell
back says ``standard``), and where it ran, ``usage.inference_geo`` (``us``, ``global``,
``not_available``): both bill at a multiple of the rates (:mod:`meterline.served`). They
are kept as the API spells them and, like the tier, go to the iterations billed beside.

Server-side web searches: ``usage.server_tool_use.web_search_requests`` (billed per
search, $10 per 1,000), the latest report wins like every other figure (``message_delta``
repeats it cumulatively: counted once). ``web_fetch_requests`` is not billed beyond the
fetched content's tokens and is not counted.

``usage.iterations`` (advisor tool, compaction): the top-level figures are the sum of
the ``message`` iterations; every other iteration (``advisor_message`` with its own
``model``, ``compaction``) is billed beside them and becomes an extra usage
(:attr:`Usage.extra`) with that iteration's figures, mapped by the same rules.
"""

from __future__ import annotations

import json
from typing import Any

from addons.metering.counts import CountReader, check_consistency
from addons.metering.extract.framing import (
    LazyText,
    as_dict,
    as_list,
    loads,
    note,
    served_name_of,
    service_tier_of,
)
from addons.metering.sse import SSEEvent
from addons.metering.usage import Seen, Usage

#: The web search count's key in ``usage.server_tool_use``.
_WEB_SEARCHES = "web_search_requests"
#: The one-hour share of ``cache_creation_input_tokens`` (the rest is 5-minute writes).
_ONE_HOUR = "ephemeral_1h_input_tokens"
_FIELDS = (
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "output_tokens",
)


def _delta_text(obj: Any) -> str:
    delta = as_dict(as_dict(obj).get("delta"))
    for key in ("text", "thinking", "partial_json"):
        value = delta.get(key)
        if isinstance(value, str):
            return value
    return ""


def _content_text(message: dict[str, Any]) -> str:
    out: list[str] = []
    for block in as_list(message.get("content")):
        block = as_dict(block)
        for key in ("text", "thinking"):
            if isinstance(block.get(key), str):
                out.append(block[key])
        if block.get("type") == "tool_use" and "input" in block:
            out.append(json.dumps(block["input"], ensure_ascii=False))
    return "".join(out)


def _read_fields(raw: dict[str, Any], counts: CountReader, into: dict[str, int]) -> None:
    """The non-null token fields of one usage object (or iteration), latest wins."""
    for name in _FIELDS:
        value = counts.get(raw, name, main=name == "output_tokens")
        if value is not None:
            into[name] = value
    thinking = counts.get(as_dict(raw.get("output_tokens_details")), "thinking_tokens")
    if thinking is not None:
        into["thinking_tokens"] = thinking
    breakdown = as_dict(raw.get("cache_creation"))
    one_hour = counts.get(breakdown, _ONE_HOUR)
    if one_hour is not None:
        into[_ONE_HOUR] = one_hour
    if "cache_creation_input_tokens" not in into:
        parts = [counts.get(breakdown, key) for key in breakdown]
        if any(p is not None for p in parts):
            into["cache_creation_input_tokens"] = sum(p or 0 for p in parts)


def _usage_of(fields: dict[str, int]) -> Usage:
    written, one_hour = fields.get("cache_creation_input_tokens", 0), fields.get(_ONE_HOUR, 0)
    return Usage(
        input=fields.get("input_tokens", 0),
        cached_input=fields.get("cache_read_input_tokens", 0),
        cache_write=written - one_hour,
        cache_write_1h=one_hour,
        output=fields.get("output_tokens", 0),
        reasoning=fields.get("thinking_tokens", 0),
        web_search=fields.get(_WEB_SEARCHES, 0),
    )


class AnthropicReader:
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        self._fields: dict[str, int] = {}
        self._counts = CountReader()
        #: Iterations billed beside the top-level figures: (model or None, fields).
        self._beside: list[tuple[str | None, dict[str, int]]] = []
        self._model: str | None = None
        self._id: str | None = None
        self._tier: str | None = None
        self._speed: str | None = None
        self._geo: str | None = None
        self._streamed = False
        self._final = False  # a message_delta (or a whole JSON message) was seen
        self._text = LazyText(_delta_text, problems, "content_block_delta")
        self._body_text = ""

    def _take_usage(self, raw: Any) -> None:
        raw = as_dict(raw)
        _read_fields(raw, self._counts, self._fields)
        self._tier = service_tier_of(raw) or self._tier
        self._speed = served_name_of(raw, "speed") or self._speed
        self._geo = served_name_of(raw, "inference_geo") or self._geo
        # Top level only: the call's searches, once (an iteration's are inside them).
        searches = self._counts.get(as_dict(raw.get("server_tool_use")), _WEB_SEARCHES)
        if searches is not None:
            self._fields[_WEB_SEARCHES] = searches
        iterations = raw.get("iterations")
        self._revise_one_hour(raw, iterations)
        if isinstance(iterations, list):  # repeated in each report: the latest wins
            self._beside = []
            for item in iterations:
                item = as_dict(item)
                if item.get("type") == "message":
                    continue  # already in the top-level figures
                fields: dict[str, int] = {}
                _read_fields(item, self._counts, fields)
                model = item.get("model")
                self._beside.append((model if isinstance(model, str) and model else None, fields))

    def _revise_one_hour(self, raw: dict[str, Any], iterations: Any) -> None:
        """A report that revises the cache-write total without its own one-hour share
        (``message_delta`` repeats ``cache_creation_input_tokens`` but not
        ``cache_creation``) must not keep an earlier report's share against the new total.

        The share is then the sum of the ``message`` iterations' one-hour writes when the
        report lists them (the top-level figures are their sum), else the earlier share
        capped at the revised total (never more one-hour writes than writes).
        """
        quiet = CountReader()  # these figures' problems are noted once, by _read_fields
        if quiet.get(raw, "cache_creation_input_tokens") is None:
            return  # the total is not revised here
        if quiet.get(as_dict(raw.get("cache_creation")), _ONE_HOUR) is not None:
            return  # the report gives its own share
        shares = [
            self._counts.get(as_dict(item.get("cache_creation")), _ONE_HOUR)
            for item in map(as_dict, iterations if isinstance(iterations, list) else [])
            if item.get("type") == "message"
        ]
        if any(share is not None for share in shares):
            self._fields[_ONE_HOUR] = sum(share or 0 for share in shares)
        elif _ONE_HOUR in self._fields:
            total = self._fields.get("cache_creation_input_tokens", 0)
            self._fields[_ONE_HOUR] = min(self._fields[_ONE_HOUR], total)

    def _take_message(self, message: dict[str, Any]) -> None:
        if isinstance(message.get("model"), str) and message["model"]:
            self._model = message["model"]
        if isinstance(message.get("id"), str) and message["id"]:
            self._id = message["id"]
        if "usage" in message:
            self._take_usage(message["usage"])

    def on_object(self, obj: Any) -> None:
        obj = as_dict(obj)
        kind = obj.get("type")
        if kind in ("message_start", "message_delta", "content_block_delta", "error"):
            self._on_typed(kind, obj)  # a stream event delivered as JSON (NDJSON relays)
            return
        self._take_message(obj)
        if "usage" in obj:
            self._final = True
        self._body_text += _content_text(obj)

    def on_event(self, event: SSEEvent) -> None:
        kind = event.event
        if kind == "content_block_delta":
            self._text.add_raw(event.data)
        elif kind in ("message_start", "message_delta", "error"):
            obj = loads(event.data, self.problems, kind)
            if obj is not None:
                self._on_typed(kind, as_dict(obj))
        elif kind == "message" and '"type"' in event.data:  # relays without "event:" lines
            obj = as_dict(loads(event.data, self.problems, "stream event"))
            typed = obj.get("type")
            if typed in ("message_start", "message_delta", "content_block_delta", "error"):
                self._on_typed(typed, obj)

    def _on_typed(self, kind: str, obj: dict[str, Any]) -> None:
        self._streamed = True
        if kind == "message_start":
            self._take_message(as_dict(obj.get("message")))
        elif kind == "message_delta":
            self._take_usage(obj.get("usage"))
            self._final = True
        elif kind == "content_block_delta":
            self._text.add_obj(obj)
        else:
            note(self.problems, f"provider error event: {json.dumps(obj)[:120]}")

    def usage(self) -> Usage | None:
        if not self._fields:
            return None
        usage = _usage_of(self._fields)
        usage.model = self._model
        usage.response_id = self._id
        usage.service_tier = self._tier
        usage.speed, usage.inference_geo = self._speed, self._geo
        usage.partial = self._streamed and not self._final
        usage.invalid = self._counts.problem() or check_consistency(usage)
        for model, fields in self._beside:
            extra = _usage_of(fields)
            extra.model = model or self._model
            usage.invalid = usage.invalid or check_consistency(extra)
            usage.extra.append(extra)
        return usage

    def seen(self) -> Seen:
        return Seen(self._model, self._id, self._tier)

    def text(self) -> str:
        return self._body_text + self._text.text()
