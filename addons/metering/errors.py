"""Error bodies shaped like each provider's own, so SDKs raise their usual exceptions.

An OpenAI SDK that gets a 401 from the proxy raises ``openai.AuthenticationError`` with
our message, exactly as if the provider had refused the key.
"""

from __future__ import annotations

import json
from typing import Literal

from mitmproxy import http

ErrorKind = Literal[
    "unknown_key",
    "injection_failed",
    "limit",
    "credits",
    "not_granted",
    "unavailable",
    "too_large",
    "no_route",
]

_OPENAI = {
    "unknown_key": ("invalid_request_error", "invalid_api_key"),
    "injection_failed": ("server_error", "proxy_key_injection_failed"),
    # What OpenAI answers when an account's quota or credit is used up.
    "limit": ("insufficient_quota", "insufficient_quota"),
    "credits": ("insufficient_quota", "insufficient_quota"),
    "not_granted": ("invalid_request_error", "model_not_allowed"),
    "unavailable": ("server_error", "governance_unavailable"),
    "too_large": ("invalid_request_error", "request_too_large"),
    "no_route": ("server_error", "proxy_route_unavailable"),
}
_ANTHROPIC = {
    "unknown_key": "authentication_error",
    "injection_failed": "api_error",
    "limit": "rate_limit_error",
    "credits": "rate_limit_error",
    "not_granted": "permission_error",
    "unavailable": "api_error",
    # Anthropic's own 413: "Request exceeds the maximum allowed number of bytes."
    "too_large": "request_too_large",
    "no_route": "api_error",
}
_GEMINI = {
    "unknown_key": "UNAUTHENTICATED",
    "injection_failed": "UNAVAILABLE",
    "limit": "RESOURCE_EXHAUSTED",
    "credits": "RESOURCE_EXHAUSTED",
    "not_granted": "PERMISSION_DENIED",
    "unavailable": "UNAVAILABLE",
    "too_large": "INVALID_ARGUMENT",
    "no_route": "UNAVAILABLE",
}

STATUS: dict[ErrorKind, int] = {
    "unknown_key": 401,
    "injection_failed": 502,
    "limit": 429,
    "credits": 429,
    "not_granted": 403,
    "unavailable": 503,
    "too_large": 413,
    "no_route": 502,
}


def error_body(flavor: str, kind: ErrorKind, message: str) -> tuple[int, bytes]:
    """(HTTP status, JSON body) for ``kind`` in the shape ``flavor`` clients expect."""
    status = STATUS[kind]
    body: dict[str, object]
    if flavor == "anthropic":
        body = {"type": "error", "error": {"type": _ANTHROPIC[kind], "message": message}}
    elif flavor == "gemini":
        body = {"error": {"code": status, "message": message, "status": _GEMINI[kind]}}
    else:
        err_type, code = _OPENAI[kind]
        body = {"error": {"message": message, "type": err_type, "param": None, "code": code}}
    return status, json.dumps(body).encode()


def respond(flow: http.HTTPFlow, flavor: str, kind: ErrorKind, message: str) -> None:
    """Answer ``flow`` from the proxy with ``kind``'s error (the request is not forwarded)."""
    status, body = error_body(flavor, kind, message)
    flow.response = http.Response.make(
        status, body, {"content-type": "application/json", "x-meterline": kind}
    )
