"""How each Stripe call of the sync is named: its idempotency key and its attempt scope.

A create or finalize carries ``Idempotency-Key: meterline-<kind>-<our ids>``, derived from
our ids only, so a call whose answer was lost is replayed under the same key on any run;
from the second attempt (Stripe answered the first with an error, which it replays for
24 hours) the key ends in ``~<attempt>``. The scope names the step in ``stripe_attempts``.
"""

from __future__ import annotations

import hashlib

MAX_IDEMPOTENCY_KEY = 255
"""Stripe's idempotency keys are up to 255 characters."""


def idem(kind: str, *parts: object, attempt: int = 0) -> str:
    """``meterline-<kind>-<parts>``, then ``~<attempt>`` from the second attempt on.

    ``~`` is in no customer key or invoice number, so no two keys collide. A key that
    would pass Stripe's 255 characters (a long customer key) carries the SHA-256 of its
    parts instead: still derived from our ids only, so it is the same on every run.
    """
    body = "-".join(str(p) for p in parts)
    key = f"meterline-{kind}-{body}"
    suffix = f"~{attempt}" if attempt else ""
    if len(key) + len(suffix) > MAX_IDEMPOTENCY_KEY or not key.isascii():
        key = f"meterline-{kind}-sha256~{hashlib.sha256(body.encode()).hexdigest()}"
    return key + suffix


def customer_key_idem(customer_key: str, attempt: int = 0) -> str:
    return idem("customer", customer_key, attempt=attempt)


def invoice_idem(number: str, attempt: int = 0) -> str:
    return idem("invoice", number, attempt=attempt)


def item_idem(number: str, line_no: int, attempt: int = 0) -> str:
    return idem("item", number, line_no, attempt=attempt)


def finalize_idem(number: str, attempt: int = 0) -> str:
    return idem("finalize", number, attempt=attempt)


def customer_scope(customer_key: str) -> str:
    return f"customer:{customer_key}"


def invoice_scope(number: str) -> str:
    return f"invoice:{number}"


def item_scope(number: str, line_no: int) -> str:
    return f"item:{number}:{line_no}"


def finalize_scope(number: str) -> str:
    return f"finalize:{number}"
