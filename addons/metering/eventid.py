"""The ``event_id`` of one metered call: it must name that call and no other.

The writer drops an event whose id is already stored (a replayed spool segment), so two
different calls must never share an id. The id is fixed before the spool:

- ``<provider>:<response id>@<request id>`` when the provider named its response and
  sent a request-id header (``x-request-id``, ``request-id``, ``apim-request-id``): the
  response id alone is not always unique (Groq's ``groq/compound`` answers every call
  with ``"id": "stub"``), the pair is;
- ``<provider>:<response id>`` when there is no request-id header and the response id
  can identify one call (:func:`is_unique_id`);
- ``ml:<uuid4>`` otherwise: no response id, or one known not to identify a call and no
  request id to pair it with.

Usage billed beside a call's own figures (Anthropic's ``usage.iterations`` other than
``message``) gets the call's id plus ``#<n>``, ``n`` counting those usages from 0.
"""

from __future__ import annotations

import uuid

#: Response ids providers are known to repeat across calls (compared case-insensitively).
NON_UNIQUE_IDS = frozenset({"stub", "null", "none", "undefined", "id", "0", "chatcmpl"})
#: Shorter ids are too few to tell calls apart (real ones are 20+ characters).
MIN_UNIQUE_LENGTH = 8


def is_unique_id(response_id: str) -> bool:
    """Whether ``response_id`` can name one call: not a known placeholder, not tiny."""
    rid = response_id.strip()
    return len(rid) >= MIN_UNIQUE_LENGTH and rid.lower() not in NON_UNIQUE_IDS


def event_id(provider: str, response_id: str | None, request_id: str | None) -> str:
    if not response_id:
        return f"ml:{uuid.uuid4()}"
    if request_id and is_unique_id(request_id):
        return f"{provider}:{response_id}@{request_id}"
    if is_unique_id(response_id):
        return f"{provider}:{response_id}"
    return f"ml:{uuid.uuid4()}"


def beside_id(call_id: str, index: int) -> str:
    """The id of the ``index``-th usage billed beside call ``call_id``."""
    return f"{call_id}#{index}"
