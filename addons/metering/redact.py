"""Keep raw API keys out of what mitmproxy itself prints.

mitmdump's flow lines (its ``dumper`` addon, on by default) print each request's full
URL, and Gemini takes its key as ``?key=``; with ``flow_detail`` 2 or more they print the
request headers too (``Authorization: Bearer ...``), and for a flow that failed, its
error, which for a malformed request quotes the offending line. mitmproxy's log prints
a request line or header line it could not parse whole (``Invalid header line:
b'Authorization Bearer sk-...'``). The dumper writes straight to a file object, so
:func:`install` wraps that object, and :class:`RedactingFilter` sits on the log's
handlers: every line either prints goes through :func:`redact`, which replaces with
``[redacted]`` the value of a key query parameter (``key``, ``api_key``, ``apikey``,
``access_token``, however its name is %-encoded), of a credential header line
(:data:`SECRET_HEADERS`: the key headers and other credentials, such as Azure API
Management's subscription key, an AWS session token, cookies), of a header line whose
name is not valid UTF-8 (mitmproxy prints it as ``\xff\xfe: ...``: nothing says what
its value is), a credential-like word right after a key header's name (a malformed line,
raw bytes in a debug log), ``Bearer <token>`` anywhere (not an auth-param: in
``www-authenticate: Bearer realm=Bearer <key>`` the key is the token), OpenAI
Realtime's ``openai-insecure-api-key.<key>`` subprotocol, a URL's userinfo, and a
PostgreSQL password in a lake locator (:func:`meterline.conninfo.shown`).
Lines without a key pass unchanged (substring tests).
"""

from __future__ import annotations

import logging
import re
from typing import IO, Any
from urllib.parse import unquote_plus

from addons.metering.keys import KEY_HEADERS, QUERY_KEY_PARAMS
from meterline.conninfo import shown

REDACTED = "[redacted]"

_ANSI = r"(?:\x1b\[[0-9;]*m)*"  # the dumper colours its output on a terminal
#: Query parameter names whose value is a credential (compared %-decoded, lower case).
_QUERY_SECRETS = frozenset(
    {*QUERY_KEY_PARAMS, "api_key", "api-key", "apikey", "subscription-key"}
)  # subscription-key: Azure API Management and Cognitive Services
_QUERY_PARAM = re.compile(r"([?&;])([^=&#?;\s\x1b]+)(=)([^&#;\s\x1b]+)")
SECRET_HEADERS: tuple[str, ...] = (
    *KEY_HEADERS,
    "ocp-apim-subscription-key",  # Azure API Management (its query form: subscription-key)
    "x-amz-security-token",  # an AWS session token (Bedrock), beside a SigV4 Authorization
    "proxy-authorization",  # credentials for this or an upstream proxy
    "cookie",  # a session is a credential (a provider's console, a gateway's login)
    "set-cookie",
    "x-auth-token",
)
"""Headers whose whole value is a credential: never printed. Not read for attribution
(that is :data:`addons.metering.keys.KEY_HEADERS`); only kept out of what is printed."""
#: Any other header named as a credential, word by word (``-`` or ``_`` between words):
#: gateways' and SDKs' own (``x-litellm-api-key``, ``x-portkey-api-key``,
#: ``x-functions-key``, ``openai-api-key``, ``api_key``, ``x-api-token``, ``x-authtoken``,
#: ``authentication``). ``x-ratelimit-remaining-tokens`` is no credential (``tokens`` is
#: not one of the words), nor are the request ids and usage figures named like one.
#: Words are letters and digits (``\w`` also takes ``_``: ``a_a_a...`` backtracked
#: exponentially, 22 s of the event loop for one header name), at most 16 around the word
#: (each regex here is bounded: they run on what clients send, in every log line).
_CREDENTIAL_WORDS = (
    r"(?:keys?|apikeys?|token|secret|password|passwd|passphrase|pwd|pass|auth"
    r"|authentication|authorization|bearer|credentials?"
    r"|[a-z0-9]{0,32}(?:apikey|authtoken|apitoken|accesstoken|accesskey|secretkey"
    r"|sessiontoken|sessionkey|clientsecret|refreshtoken|idtoken))[0-9]*"
)
_NOT_CREDENTIALS = (
    r"(?!(?:idempotency-key|sec-websocket-key"
    r"|x-auth-request-(?:user|email|groups|preferred-username)"
    r"|[a-z0-9-]{0,64}-token-count|[a-z0-9-]{0,64}-key-(?:spend|max-budget))(?:\s*:|'))"
)
_NAMED_AS_CREDENTIAL = (
    _NOT_CREDENTIALS
    + rf"(?:[a-z0-9]{{1,64}}[-_]{{1,3}}){{0,16}}{_CREDENTIAL_WORDS}"
    + r"(?:[-_]{1,3}[a-z0-9]{1,64}){0,16}"
)
_HEADER_NAMES = "|".join([*(re.escape(h) for h in SECRET_HEADERS), _NAMED_AS_CREDENTIAL])
#: A header name mitmproxy printed with ``\xNN`` escapes: not valid UTF-8, not a known
#: header, so its value (which a client may have meant as a key) is not shown.
_ODD_NAME = r"[^\s:'\x1b]{0,128}\\x[0-9a-fA-F]{2}[^\s:'\x1b]{0,128}"
_HEADER_LINE = re.compile(
    r"^([ \t]*" + _ANSI + "(?:" + _HEADER_NAMES + "|" + _ODD_NAME + ")"
    + _ANSI + r"\s*:\s*" + _ANSI + r")(?:(bearer|basic)\s+)?[^\x1b\n]+",
    re.IGNORECASE | re.MULTILINE,
)  # fmt: skip
#: The same in raw bytes (a debug log's ``b'...\r\nname: value\r\n...'``): the value up
#: to the escaped CR or LF, or the literal's end.
_RAW_HEADER_LINE = re.compile(
    r"(\\n(?:" + _HEADER_NAMES + "|" + _ODD_NAME + r")\s*:\s*)(?:(?!\\[rn])[^'\n])+",
    re.IGNORECASE,
)
#: HTTP/2's header tuples in a debug log: ``(b'cookie', b'...')``.
_H2_HEADER = re.compile(
    r"(b'(?:" + _HEADER_NAMES + r")',\s*b'(?:(?:bearer|basic)\s+)?)(?:[^'\\]|\\.)*'",
    re.IGNORECASE,
)
#: A key header's name not followed by ``:`` (a malformed line, quoted in an error), then a
#: word that looks like a credential: 8+ key characters with a digit, ``-`` or ``_`` in it
#: (so "authorization required" stays readable).
_LOOSE_HEADER = re.compile(
    r"(?:(?<![\w-])|(?<=\\n))"  # a word's start, or after an escaped newline (raw bytes)
    r"((?:" + _HEADER_NAMES + r")(?:[\s=:]+|',\s*b')(?:(?:bearer|basic)\s+)?)"
    r"(?=[\w.~+/=-]{0,256}[\d_-])[\w.~+/=-]{8,}",
    re.IGNORECASE,
)  # also ``name: value`` in a debug log's raw bytes and HTTP/2's ``(b'name', b'value')``
#: OpenAI Realtime from a browser sends the key as a WebSocket subprotocol.
_WS_SUBPROTOCOL_KEY = re.compile(r"(openai-insecure-api-key\.)[^\s,;'\x1b]+", re.IGNORECASE)
#: A URL's userinfo (``scheme://user:password@host``): a key, as clients put it there.
_USERINFO = re.compile(r"(://|\bCONNECT )[^/@\s'\x1b]+@")  # CONNECT u:key@host:port
#: ``Bearer <credential>`` anywhere (HTTP/2's errors quote a header's value, not its name).
#: Not an auth-param (``realm=...``, a name, ``=`` and a value): a token68 only ends in ``=``.
_BEARER = re.compile(
    r"(?<![\w-])((?:bearer|basic)\s+)(?![\w-]+=[^=\s,])[\w.~+/=-]{8,}", re.IGNORECASE
)
#: A provider key or ephemeral token by its shape, anywhere (a provider's error quoting the
#: key it got: "Incorrect API key provided: sk-...", a mint's answer printed at
#: ``flow_detail`` 3): OpenAI, DeepSeek and OpenRouter ``sk-``, Anthropic ``sk-ant-``, xAI
#: ``xai-``, Groq ``gsk_``, Google ``AIza``, OpenAI's ephemeral ``ek_``, Gemini's
#: ``auth_tokens/``. The prefix is kept (it says which provider's key it was).
_KEY_SHAPE = re.compile(r"(?<![\w-])((?:sk-|xai-|gsk_|ek_|AIza|auth_tokens/))[\w-]{12,}")
#: A JSON member named as a credential (``"api_key": "..."``, ``"client_secret": "..."``):
#: a body printed at ``flow_detail`` 3 or 4.
_JSON_SECRET = re.compile(
    r'("' + _NAMED_AS_CREDENTIAL + r'"\s*:\s*")(?:[^"\\]|\\.){8,}(?=")', re.IGNORECASE
)
#: A protocol error quoting raw header bytes (``b'...'``), which may be a key's value.
_PROTOCOL_ERROR = re.compile(r"protocol error|invalid header|header value|header name", re.I)
_BYTES_LITERAL = re.compile(r"b'(?:[^'\\]|\\.)*'" + r'|b"(?:[^"\\]|\\.)*"')
#: Substrings without which a line holds nothing to redact: ``=`` (a query parameter, a
#: ``password=``), ``@`` (a URL's userinfo), ... A flow line without them costs a few
#: substring tests (it cost ~18 µs per line when every URL went through the patterns).
_NEEDLES = (
    "=", "@", "bearer", "basic", "protocol error", "header", "insecure-api-key", "\\x",
    *SECRET_HEADERS, "key", "token", "secret", "pass", "pwd", "auth", "bearer", "credential",
    "sk-", "xai-", "gsk_", "ek_", "aiza",
)  # fmt: skip


def _query_param(m: re.Match[str]) -> str:
    name = m.group(2)
    if "%" in name or "+" in name:
        name = unquote_plus(name, errors="replace")
    if name.lower() not in _QUERY_SECRETS:
        return m.group(0)
    return m.group(1) + m.group(2) + m.group(3) + REDACTED


def _userinfo(m: re.Match[str]) -> str:
    if m.group(0).endswith(":***@"):  # a PostgreSQL URI's password, masked by `shown`
        return m.group(0)
    return m.group(1) + REDACTED + "@"


def redact(text: str) -> str:
    """``text`` with key values in URLs and header lines replaced by ``[redacted]``."""
    lower = text.lower()
    if not any(n in lower for n in _NEEDLES):
        return text
    if "=" in text:
        text = _QUERY_PARAM.sub(_query_param, text)
    text = _HEADER_LINE.sub(
        lambda m: m.group(1) + (m.group(2) + " " if m.group(2) else "") + REDACTED, text
    )
    if "\\" in text:  # raw bytes: ``\r\n`` escaped
        text = _RAW_HEADER_LINE.sub(r"\1" + REDACTED, text)
    if "b'" in text:
        text = _H2_HEADER.sub(r"\1" + REDACTED + "'", text)
    text = _LOOSE_HEADER.sub(r"\1" + REDACTED, text)
    text = _BEARER.sub(r"\1" + REDACTED, text)
    text = _KEY_SHAPE.sub(r"\1" + REDACTED, text)
    if '"' in text:
        text = _JSON_SECRET.sub(r"\1" + REDACTED, text)
    if "insecure-api-key" in lower:
        text = _WS_SUBPROTOCOL_KEY.sub(r"\1" + REDACTED, text)
    text = shown(text)  # a lake locator's PostgreSQL password, as `***`
    if "@" in text:
        text = _USERINFO.sub(_userinfo, text)
    if _PROTOCOL_ERROR.search(text):
        text = _BYTES_LITERAL.sub("b'" + REDACTED + "'", text)
    return text


class RedactingWriter:
    """A text file object that redacts keys before writing to ``inner``."""

    def __init__(self, inner: IO[str]) -> None:
        self.inner = inner

    def write(self, text: str) -> int:
        self.inner.write(redact(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding, ...
        return getattr(self.inner, name)


def install(dumper: Any) -> bool:
    """Make mitmproxy's ``dumper`` addon print through :class:`RedactingWriter`.

    Returns False when there is no dumper (mitmproxy's UI, or it was removed).
    """
    if dumper is None or not hasattr(dumper, "outfp"):
        return False
    if not isinstance(dumper.outfp, RedactingWriter):
        dumper.outfp = RedactingWriter(dumper.outfp)
    return True


class RedactingFilter(logging.Filter):
    """Redacts keys in every record a log handler prints (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not fit: the handler reports it
            return True
        redacted = redact(message)
        if redacted is not message:
            record.msg, record.args = redacted, None
        return True


def install_log_filter(logger: logging.Logger | None = None) -> RedactingFilter:
    """Put one :class:`RedactingFilter` on each handler of ``logger`` (the root logger,
    where mitmproxy's terminal log hangs); undo with :func:`remove_log_filter`."""
    found = RedactingFilter()
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(found)
    return found


def remove_log_filter(found: RedactingFilter, logger: logging.Logger | None = None) -> None:
    for handler in (logger or logging.getLogger()).handlers:
        handler.removeFilter(found)
