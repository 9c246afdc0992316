"""One metered exchange -> one ``usage_events`` row (:mod:`meterline.eventschema`).

The row is a JSON-safe dict (``ts`` is an ISO string, naive UTC) because it goes to
the spool first. Its ``event_id`` is fixed here, before the spool, so a replayed
segment can never insert an event twice; how it names exactly one call is
:mod:`addons.metering.eventid`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from addons.metering import eventid
from addons.metering.usage import Usage

REQUEST_ID_HEADERS: tuple[str, ...] = ("x-request-id", "request-id", "apim-request-id")


@dataclass(slots=True)
class Exchange:
    """What the addon knows about one metered request/response, independent of mitmproxy."""

    provider: str
    flavor: str
    method: str
    host: str
    path: str
    consumer: str | None
    key_fingerprint: str | None
    status: int | None = None
    streamed: bool = False
    request_id: str | None = None
    t_request: float | None = None
    """Epoch seconds when the proxy had the whole request (and sent it on)."""
    t_first_byte: float | None = None
    t_done: float | None = None
    at: float | None = None
    """Epoch seconds for the event's ``ts`` when not ``t_done``: a background response's
    ``created_at``, the same on every read of it (:mod:`addons.metering.background`)."""


def request_id_from(headers: Mapping[str, str]) -> str | None:
    for name in REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value
    return None


def _ms(start: float | None, end: float | None) -> float | None:
    """Milliseconds from ``start`` to ``end``, to the microsecond (never negative)."""
    if start is None or end is None or end <= start:
        return None if start is None or end is None else 0.0
    return int((end - start) * 1_000_000 + 0.5) / 1000


_second: tuple[int, str] = (-1, "")


def timestamp(epoch: float) -> str:
    """``epoch`` as naive UTC ISO 8601 with microseconds, ``datetime.isoformat``'s form.

    Memoised per second: events of one second share the date-time part (formatting a
    ``datetime`` per event was a tenth of the addon's CPU on a JSON call). The memo is
    one tuple, replaced whole, so a reader on another thread never mixes two seconds.
    """
    global _second
    whole = int(epoch)
    micros = round((epoch - whole) * 1_000_000)  # half to even, as datetime rounds
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    second, text = _second
    if second != whole:
        text = datetime.fromtimestamp(whole, UTC).replace(tzinfo=None).isoformat()
        _second = (whole, text)
    return f"{text}.{micros:06d}" if micros else text


def build_events(
    ex: Exchange, usage: Usage, proxy_id: str | None, event_id: str | None = None
) -> list[dict[str, Any]]:
    """The call's event, then one per usage billed beside it (:attr:`Usage.extra`).
    ``event_id``: the call's id when it is not a fresh one (a background response's)."""
    main = build_event(ex, usage, proxy_id, event_id)
    rows = [main]
    for i, extra in enumerate(usage.extra):
        extra.response_id = usage.response_id
        # The call's tier, speed and geography served them too.
        extra.service_tier = usage.service_tier
        extra.speed, extra.inference_geo = usage.speed, usage.inference_geo
        rows.append(build_event(ex, extra, proxy_id, eventid.beside_id(main["event_id"], i)))
    return rows


def build_event(
    ex: Exchange, usage: Usage, proxy_id: str | None, event_id: str | None = None
) -> dict[str, Any]:
    done = ex.t_done if ex.t_done is not None else time.time()
    if event_id is None:
        event_id = eventid.new_event_id()
    return {
        "event_id": event_id,
        "ts": timestamp(done if ex.at is None else ex.at),
        "consumer": ex.consumer,
        "key_fingerprint": ex.key_fingerprint,
        "provider": ex.provider,
        "flavor": ex.flavor,
        "model": usage.model,
        "input_tokens": usage.input,
        "cached_input_tokens": usage.cached_input,
        "cache_write_tokens": usage.cache_write,
        "output_tokens": usage.output,
        "reasoning_tokens": usage.reasoning,
        "estimated": usage.estimated,
        "response_id": usage.response_id,
        "request_id": ex.request_id,
        "method": ex.method,
        "host": ex.host,
        # Never the query string: Gemini clients may put the API key in ?key=.
        "path": ex.path.split("?", 1)[0],
        "status": ex.status,
        "streamed": ex.streamed,
        "latency_ms": _ms(ex.t_request, done),
        "ttft_ms": _ms(ex.t_request, ex.t_first_byte),
        "proxy_id": proxy_id,
        "reason": None,
        "cache_write_1h_tokens": usage.cache_write_1h,
        "audio_input_tokens": usage.audio_input,
        "audio_output_tokens": usage.audio_output,
        "web_search_calls": usage.web_search,
        "cached_audio_input_tokens": usage.cached_audio_input,
        "service_tier": usage.service_tier,
        "speed": usage.speed,
        "inference_geo": usage.inference_geo,
    }
