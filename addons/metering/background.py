"""OpenAI Responses API background mode: a response is billed once, when a read shows
it has ended, with the provider's figures.

``POST .../responses`` with ``background: true`` answers at once with ``status:
"queued"`` and ``usage: null``; the model runs on, and the provider reports the usage on
the response object once it reaches a terminal status (``completed``, ``incomplete``,
``failed``, ``cancelled``). The client reads it back: it polls ``GET .../responses/<id>``,
resumes the stream with ``GET .../responses/<id>?stream=true&starting_after=<n>``, or
cancels it (``POST .../responses/<id>/cancel`` returns the response too). So:

- the POST stores **no event** unless its own body already shows the response ended (a
  background stream read to its ``response.completed``): no estimate is made for usage
  the provider reports later (before, it stored a guess of one input token, and the real
  usage was never read). Its governance reservation is released when it answers;
- a read that shows a background response at a terminal status stores the response's
  event: the provider's figures, the consumer of the key presented on that read, the id
  ``response:<provider>:<resp_id>`` (:func:`~addons.metering.eventid.response_event_id`)
  and the ts of the response's ``created_at`` when that is plausible (:func:`event_time`;
  else the time of the read): every read of it, on any proxy, makes the same event, and
  the writer stores it once (it always looks such ids up in the whole store, whatever
  their ts);
- other reads store nothing: a response still queued or in progress, an error, and a
  response that was **not** made in background mode (its POST was metered already: a
  later ``retrieve`` of a stored response must not bill it again). A resumed stream is
  taken as background (only background responses can be streamed again).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from addons.metering import eventid
from addons.metering.extract.openai import OpenAIReader

#: Statuses a response does not leave (OpenAI's "final (terminal) state").
TERMINAL = frozenset({"completed", "incomplete", "failed", "cancelled"})


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """Where a Responses API response stands, from the last response object seen."""

    response_id: str | None
    status: str | None
    background: bool | None
    """The response's own ``background`` field (None: it did not say)."""
    created_at: float | None
    """Epoch seconds, as the provider gave them (a finite number, else None); fixed for
    the life of the response (``completed_at`` is not set for every terminal status, and
    a cancelled response has been seen completing later). See :func:`event_time`."""


def lifecycle_of(response: dict[str, Any]) -> Lifecycle:
    rid, status = response.get("id"), response.get("status")
    background = response.get("background")
    return Lifecycle(
        rid if isinstance(rid, str) and rid else None,
        status if isinstance(status, str) else None,
        background if isinstance(background, bool) else None,
        _seconds(response.get("created_at")),
    )


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # an int past a float's range
        return None
    return seconds if math.isfinite(seconds) else None


#: How long a provider keeps a response readable: OpenAI stores a response 30 days.
#: A ``created_at`` older than that at a read is not the time the response was made.
RETENTION_S = 30 * 86400
#: How far a provider's clock may run ahead of the proxy's.
CLOCK_SKEW_S = 300.0


def event_time(created_at: float | None, read_at: float) -> float | None:
    """The ``ts`` of a background response's event: its ``created_at`` if that is a
    plausible time for a response read at ``read_at`` (at most :data:`RETENTION_S`
    before it, at most :data:`CLOCK_SKEW_S` after it), else None: the time of the read.

    Not a ``created_at`` as given: 0 or -1 would bill in a period long invoiced, a year
    ahead in one not begun, milliseconds (1767225600000) or 1e30 cannot be a date at all
    (they raised OverflowError on every read: the response was never stored). A read
    time differs from read to read, which the writer allows for: it looks the event's
    id up in the whole store, whatever the ts (:func:`addons.metering.batchsql.keyed_lookup`).
    """
    if created_at is None:
        return None
    if read_at - RETENTION_S <= created_at <= read_at + CLOCK_SKEW_S:
        return created_at
    return None


class ResponsesReader(OpenAIReader):
    """The OpenAI reader, keeping the lifecycle of the last response object it read (a
    JSON body, or a stream's ``response.created`` ... ``response.completed``)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems)
        self.lifecycle: Lifecycle | None = None

    def _on_response(self, response: dict[str, Any], final: bool = True) -> None:
        super()._on_response(response, final)
        self.lifecycle = lifecycle_of(response)


class ResponsesTap:
    """A flow on the Responses API: a create (``POST .../responses``) or a read."""

    __slots__ = ("reads", "reader")

    def __init__(self, reads: bool) -> None:
        self.reads = reads
        self.reader: ResponsesReader | None = None

    def new_reader(self, problems: list[str]) -> ResponsesReader:
        """The extractor's reader factory (it may build one more than once: the last is read)."""
        self.reader = ResponsesReader(problems)
        return self.reader

    def lifecycle(self) -> Lifecycle | None:
        return self.reader.lifecycle if self.reader is not None else None


def tap_for(flavor: str, method: str, path: str) -> ResponsesTap | None:
    """A tap for a metered flow on the Responses API (``path`` normalised), else None."""
    if flavor != "openai":
        return None
    if method != "POST":
        return ResponsesTap(reads=True)  # the only metered GET: a response read back
    if path.endswith(("/responses", "/responses/")):
        return ResponsesTap(reads=False)
    if path.endswith(("/cancel", "/cancel/")):
        return ResponsesTap(reads=True)
    return None


@dataclass(frozen=True, slots=True)
class Keyed:
    """Store the event of an ended background response under this id and time."""

    event_id: str
    at: float | None
    """Epoch seconds for the event's ts: the response's ``created_at`` if plausible
    (:func:`event_time`); None: the time of the read."""


@dataclass(frozen=True, slots=True)
class Skip:
    """Store no event: the response is billed when a read shows its end (or was already)."""

    why: str


def decide(
    tap: ResponsesTap,
    provider: str,
    *,
    status_code: int,
    sse: bool,
    request_json: Callable[[], Any],
    now: Callable[[], float] = time.time,
) -> Keyed | Skip | None:
    """What a finished Responses API flow stores (None: the usual rules of a call).

    Call after the extractor's ``finish`` (a JSON body is parsed then), as the read
    ends: ``now()`` is the read's time, against which ``created_at`` is judged.
    """
    life = tap.lifecycle()
    if tap.reads:
        if not 200 <= status_code < 300:
            return Skip("read failed or not answered: nothing billed")
        # The response's own field decides; a resumed stream that does not say is one
        # (only background responses can be streamed again).
        said = None if life is None else life.background
        if life is None or not (said or (said is None and sse)):
            return Skip("not a background response: billed by its own call")
    else:
        if status_code >= 400:
            return None  # refused: the usual zero-token error event
        said = None if life is None else life.background
        if said is False:
            return None  # the response says so, whatever the request body holds
        if said is None and not _asks_background(request_json()):
            return None
    if life is None or life.status not in TERMINAL or life.response_id is None:
        return Skip("background response not ended: billed when a read shows its end")
    at = event_time(life.created_at, now())
    return Keyed(eventid.response_event_id(provider, life.response_id), at)


def _asks_background(request: Any) -> bool:
    """The request's top-level ``background`` is ``true``, as the provider parses the body
    (a key spelled with escapes included, a duplicate key's last value deciding)."""
    return isinstance(request, dict) and request.get("background") is True


def queued_event_id(tap: ResponsesTap, provider: str) -> str | None:
    """The event id a background response created by this flow will be billed under,
    when the flow left it queued or in progress (None: not such a response)."""
    life = tap.lifecycle()
    if life is None or life.response_id is None or life.status in TERMINAL:
        return None
    return eventid.response_event_id(provider, life.response_id)
