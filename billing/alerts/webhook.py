"""Signed webhook requests: ``Meterline-Signature: t=<unix seconds>,v1=<hex>``.

``v1`` is HMAC-SHA256, keyed with the webhook's secret, over ``<t>.<body>`` (the body
bytes exactly as sent). A receiver checks it in three lines (docs/governance.md, "Alerts")::

    fields = dict(item.split("=", 1) for item in header.split(","))
    expected = hmac.new(secret, f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) < 300
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.error
import urllib.request

SIGNATURE_HEADER = "Meterline-Signature"
EVENT_HEADER = "Meterline-Event-Id"
TIMEOUT_S = 10.0


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def post(url: str, body: bytes, event_id: str, secret: bytes, timestamp: int) -> str | None:
    """POST the signed body; None when acknowledged (2xx), else why not (one line)."""
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "content-type": "application/json",
            "user-agent": "meterline-alerts",
            SIGNATURE_HEADER: sign(secret, timestamp, body),
            EVENT_HEADER: event_id,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:  # noqa: S310 - http(s) only
            status = resp.status
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return f"cannot connect: {reason}"
    return None if 200 <= status < 300 else f"HTTP {status}"
