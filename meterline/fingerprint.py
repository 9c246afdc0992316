"""API keys are never stored: only their SHA-256 fingerprint, ``sha256:<64 hex>``."""

import hashlib


def fingerprint(raw_key: str) -> str:
    """Fingerprint of a raw API key; surrounding whitespace is not part of the key."""
    # A header may carry bytes that are not UTF-8 (kept as surrogate escapes): hashed as sent.
    raw = raw_key.strip().encode("utf-8", "surrogateescape")
    return "sha256:" + hashlib.sha256(raw).hexdigest()
