"""HTTP for the dashboard: the standard library's threading server, and the access rule.

Bound to a loopback address (the default, 127.0.0.1) it answers anyone on this machine,
like Datasette. Bound anywhere else it requires a token (``--token`` or
``METERLINE_DASHBOARD_TOKEN``): sent as ``Authorization: Bearer <token>``, or once as
``?token=<token>``, which sets an HttpOnly cookie and redirects to the page without it.
Requests without it get 401. Only GET (and HEAD) are served: the dashboard never writes.

Without a token, a request must name a loopback host (``localhost``, ``127.0.0.1``,
``[::1]``, with any port) in its ``Host`` header, or it gets 421: a web page whose name
an attacker re-points at 127.0.0.1 (DNS rebinding) sends its own name, not one of these.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import socket
import sys
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit, urlunsplit

from billing.dashboard.app import Dashboard, Response
from meterline.catalog import FINGERPRINT_RE

COOKIE = "meterline_token"
REDACTED = "[redacted]"
TOKEN_IN_TEXT = re.compile(r"(?i)((?:^|[?&;])(?:token|%74oken)=)[^&;\s'\"]*")
"""A ``token=`` query parameter anywhere in a log line (a request line the server could
not parse is logged as it came)."""


class DashboardError(ValueError):
    """A dashboard that must not start as asked (e.g. exposed without a token)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name in a ``Host`` header, without its port or an IPv6 address's brackets."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rpartition(":")[0] if ":" in header else header


def cookie_value(token: str) -> str:
    """The token as a cookie value: percent-encoded, so ``;``, spaces or quotes in it
    cannot end the value early (:meth:`Handler._authorized` decodes it)."""
    return quote(token, safe="")


def cookie_named(header: str, name: str) -> str | None:
    """The value of cookie ``name`` in a ``Cookie`` header, read pair by pair.

    Not ``http.cookies.SimpleCookie``: it stops at the first pair it finds invalid
    (``prefs={"a":1}``, ``theme=dark mode``), and cookies on ``localhost`` are shared by
    every local app on any port, so another app's cookie would log the dashboard out.
    """
    for pair in header.split(";"):
        key, sep, value = pair.strip().partition("=")
        if sep and key.strip() == name:
            return value.strip().strip('"')
    return None


def redact_path(path: str) -> str:
    """``path`` with the value of its ``token`` query parameter replaced, for the log: a
    browser's first visit carries the dashboard's token in its URL (``/?token=...``); and
    a ``key`` filter that is not a fingerprint (an API key pasted in its place)."""
    url = urlsplit(path)
    pairs = parse_qsl(url.query, keep_blank_values=True)

    def secret(k: str, v: str) -> bool:
        return k == "token" or (k == "key" and not FINGERPRINT_RE.match(v))

    if not any(secret(k, v) for k, v in pairs):
        return path
    query = urlencode([(k, REDACTED if secret(k, v) else v) for k, v in pairs], safe="[]")
    return urlunsplit(url._replace(query=query))


def redact(text: str, token: str | None) -> str:
    """A log line without the token: no ``token=`` value, and not the token itself
    (as given or percent-encoded, as in the cookie)."""
    text = TOKEN_IN_TEXT.sub(lambda m: m.group(1) + REDACTED, text)
    if token:
        for form in {token, cookie_value(token), quote(token), quote_plus(token)}:
            text = text.replace(form, REDACTED)
    return text


def bearer_credentials(header: str) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, else ``None``. The scheme's
    name is case-insensitive (RFC 7235: ``bearer`` and ``BEARER`` too)."""
    scheme, _, credentials = header.partition(" ")
    return credentials.lstrip(" ") if scheme.lower() == "bearer" and credentials else None


def check_token(token: str) -> None:
    """A token must be printable ASCII: ``http.server`` decodes headers as Latin-1, so
    ``Authorization: Bearer`` with any other character could never match it (``openssl
    rand -hex 16`` makes a good one)."""
    if not (token.isascii() and token.isprintable()):
        raise DashboardError(
            "the token must be printable ASCII (a browser or client cannot send other "
            "characters in a header); make one with: openssl rand -hex 16"
        )


def check_binding(host: str, token: str | None) -> None:
    if not is_loopback(host) and not token:
        raise DashboardError(
            f"--host {host} makes billing data reachable from other machines: "
            "give --token (or METERLINE_DASHBOARD_TOKEN) so only holders of it can read"
        )


class Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "meterline-dashboard"

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, *, head: bool) -> None:
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query))
        token = self.server.token
        host = self.headers.get("Host")  # None: HTTP/1.0, no browser (they all send one)
        if token is None and host is not None and not is_loopback(host_name(host)):
            message = (
                f"Host {host!r} is not this machine's loopback name: "
                "without a token the dashboard answers only requests for localhost, "
                "127.0.0.1 or [::1] (a page re-pointing its own name at this machine, DNS "
                "rebinding, must not read it); open it by one of those, or start it with a token\n"
            )
            self._send(Response(421, "text/plain; charset=utf-8", message.encode()), head)
            return
        if token is not None:
            given = params.pop("token", None)
            if given is not None and hmac.compare_digest(given.encode(), token.encode()):
                location = url.path + ("?" + urlencode(params) if params else "")
                cookie = f"{COOKIE}={cookie_value(token)}; HttpOnly; SameSite=Strict; Path=/"
                self._send(
                    Response(302, "text/plain", b"", {"Location": location, "Set-Cookie": cookie}),
                    head,
                )
                return
            if not self._authorized(token):
                self._send(Response(401, "text/plain; charset=utf-8", b"token required\n",
                                    {"WWW-Authenticate": "Bearer"}), head)  # fmt: skip
                return
        try:
            response = self.server.app.handle(url.path, params)
        except Exception:  # a bug: log it, answer 500, keep serving
            self.log_failure()
            response = Response(500, "text/plain; charset=utf-8", b"internal error\n")
        self._send(response, head)

    def _authorized(self, token: str) -> bool:
        given = bearer_credentials(self.headers.get("Authorization", ""))
        if given is not None and hmac.compare_digest(given.encode(), token.encode()):
            return True
        given = cookie_named(self.headers.get("Cookie", ""), COOKIE)
        return given is not None and hmac.compare_digest(
            given.encode(), cookie_value(token).encode()
        )

    def _send(self, response: Response, head: bool) -> None:
        self.send_response(response.status, HTTPStatus(response.status).phrase)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in response.headers.items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(response.body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """The request line with the token's value redacted (never a header: the
        ``Authorization`` and ``Cookie`` headers carry the token too)."""
        if isinstance(code, HTTPStatus):
            code = code.value
        command = getattr(self, "command", None)
        line = (
            f"{command} {redact_path(self.path)} {self.request_version}"
            if command
            else self.requestline
        )
        self.log_message('"%s" %s %s', line, str(code), str(size))

    def log_message(self, format: str, *args: object) -> None:
        """Access lines and the HTTP layer's notes: only with ``--verbose``."""
        if self.server.verbose:
            self._write(format % args)

    def log_failure(self) -> None:
        """A page that raised an unexpected exception (a bug, answered 500): always logged,
        with its traceback, whatever ``--verbose`` says (``log_error`` goes through
        :meth:`log_message`, silent without it). Redacted like the access lines: the
        request's URL and an exception's message may hold the token."""
        self._write(f"internal error answering {redact_path(self.path)}\n{traceback.format_exc()}")

    def _write(self, text: str) -> None:
        line = redact(text, self.server.token).rstrip("\n")
        sys.stderr.write(f"{self.address_string()} {line}\n")


class DashboardServer(ThreadingHTTPServer):
    """Bound to its address when made (a port in use is an error at once), but listening
    only from :meth:`listen`: until then a client's connection is refused, not left
    unanswered in the backlog while the command waits for the store."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], app: Dashboard, *, token: str | None, verbose: bool
    ) -> None:
        self.app = app
        self.token = token
        self.verbose = verbose
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler, bind_and_activate=False)
        try:
            self.server_bind()
        except BaseException:
            self.server_close()
            raise

    def listen(self) -> None:
        """Accept connections (``serve_forever`` then answers them)."""
        self.server_activate()
