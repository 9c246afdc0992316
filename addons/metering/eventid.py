"""The ``event_id`` of one metered call: it names that exchange and no other.

The writer drops an event whose id is already stored (a replayed spool segment), and
governance matches its pending counts to stored events by id, so two calls must never
share one. The provider's ids cannot promise that: Ollama's OpenAI-compatible API draws
``chatcmpl-<n>`` from 999 values, vLLM builds its id from the client's ``X-Request-Id``
(one trace id sent with every call of a task gives every call the same id, and vLLM
echoes it as the response's request id too), Groq's ``groq/compound`` answers every call
with ``"id": "stub"``. An id built from them merged separate calls into one event and
dropped the others' usage. So the id is made here, one per exchange through this proxy:
``ml:<token>-<n>``, a random 64-bit token drawn when the process starts and a counter.
It is fixed before the spool, so a replayed segment carries the same id; the provider's
own ids are kept beside it (``response_id``, ``request_id``).

Usage billed beside a call's own figures (Anthropic's ``usage.iterations`` other than
``message``, a Groq compound call's underlying models) gets the call's id plus ``#<n>``,
``n`` counting those usages from 0.

One kind of event is named after the provider's id instead: an OpenAI Responses API
**background** response, billed when a read shows it ended (:mod:`addons.metering.background`).
It may be read many times (polled, its stream resumed, cancelled), by any proxy of a
fleet, hours apart, and must be billed once: its id is ``response:<provider>:<resp_id>``
(:func:`response_event_id`), the same for every read. Such an id is as unique as the
provider's: a response that can be fetched by its id names one response. Events with an
id of this kind (:func:`is_keyed`) are always checked against the store by the writer.
"""

from __future__ import annotations

import itertools
import secrets

#: Drawn once per process: two proxies (or one across a restart) never share it.
_PROCESS_TOKEN = secrets.token_hex(8)
_serial = itertools.count(1)


def new_event_id() -> str:
    """A fresh id (cheap: no system call per event; ``next`` on a count is atomic)."""
    return f"ml:{_PROCESS_TOKEN}-{next(_serial)}"


def beside_id(call_id: str, index: int) -> str:
    """The id of the ``index``-th usage billed beside call ``call_id``."""
    return f"{call_id}#{index}"


#: Prefix of the ids named after a provider's id (:func:`response_event_id`).
KEYED_PREFIX = "response:"


def response_event_id(provider: str, response_id: str) -> str:
    """The id of the event of a background response: the same on every read of it."""
    return f"{KEYED_PREFIX}{provider}:{response_id}"


def is_keyed(event_id: str) -> bool:
    """Whether ``event_id`` is named after a provider's id (it may be stored already)."""
    return event_id.startswith(KEYED_PREFIX)
