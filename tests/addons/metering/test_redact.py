from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable

import pytest

from addons.metering.redact import (
    RedactingWriter,
    install,
    install_log_filter,
    redact,
    remove_log_filter,
)


def test_redact_query_and_headers() -> None:
    line = "1.2.3.4:5: POST https://g/v1beta/models/m:generateContent?alt=sse&key=AIzaSECRET"
    assert redact(line).endswith("?alt=sse&key=[redacted]")
    headers = "    Authorization: Bearer sk-1\n    x-goog-api-key: g\n    accept: */*"
    assert redact(headers) == (
        "    Authorization: Bearer [redacted]\n    x-goog-api-key: [redacted]\n    accept: */*"
    )
    coloured = "\x1b[1mhttps://g/x?key=s\x1b[0m"
    assert redact(coloured) == "\x1b[1mhttps://g/x?key=[redacted]\x1b[0m"
    assert redact("no secrets here") == "no secrets here"


def test_install_wraps_the_dumper_once() -> None:
    class Dumper:
        outfp = io.StringIO()

    d = Dumper()
    assert install(d) and install(d)
    assert isinstance(d.outfp, RedactingWriter)
    assert not isinstance(d.outfp.inner, RedactingWriter)
    print("x?key=secret", file=d.outfp)
    assert d.outfp.inner.getvalue() == "x?key=[redacted]\n"
    assert not install(None)


@pytest.mark.parametrize(
    "line,shown",
    [
        ("POST https://g/m:generateContent?%6Bey=S3CRETQ2 HTTP/1.1", "?%6Bey=[redacted] HTTP/1.1"),
        ("POST https://g/m?k%65y=S3CRETQ4&alt=sse", "?k%65y=[redacted]&alt=sse"),
        ("POST https://g/m?API_KEY=S3CRET", "?API_KEY=[redacted]"),
        ("GET https://g/m?access_token=ya29.S3CRET", "?access_token=[redacted]"),
        # mitmproxy quotes a line it cannot parse, in its log and in a flow's error
        ("Invalid header line: b'Authorization Bearer S3CRETH5'", "line: b'[redacted]'"),
        ("Bad HTTP request line: b'POST /m?key=S3CRETH6 HTTP/1.1 x'", "?key=[redacted] HTTP"),
        ("<< Received invalid header name: b'x-api-key sk-ant-S3CRET'", "name: b'[redacted]'"),
        ("Unparsable header: Authorization Bearer S3CRET-1", "Authorization Bearer [redacted]"),
        # HTTP/2's errors quote a header's value without its name
        (
            "HTTP/2 protocol error: Received header value surrounded by whitespace "
            "b'sk-ant-S3CRET-2 '",
            "whitespace b'[redacted]'",
        ),
        ("upstream said: Bearer sk-S3CRET-3 is not valid", "Bearer [redacted] is not"),
        # OpenAI Realtime in a browser: the key as a WebSocket subprotocol
        (
            "    Sec-WebSocket-Protocol: realtime, openai-insecure-api-key.sk-S3CRET-4, "
            "openai-beta.realtime-v1",
            "openai-insecure-api-key.[redacted], openai-beta",
        ),
        # a key as a URL's userinfo (a request line mitmproxy could not parse)
        ("Bad HTTP request line: b'POST http://u:sk-S3CRET-5@h/v1 x'", "http://[redacted]@h/v1"),
        ("GET https://sk-S3CRET-6@h/v1 HTTP/1.1", "https://[redacted]@h/v1"),
        ("Bad HTTP request line: b'CONNECT u:sk-S3CRET-10@h:443 HTTP/1.1'", "CONNECT [redacted]@h"),
        ("POST https://apim.example/x?subscription-key=S3CRET11", "?subscription-key=[redacted]"),
        # raw bytes in debug logs: a header line after an escaped CRLF, HTTP/2 header tuples
        (
            r"data: b'POST /v1 HTTP/1.1\r\nx-api-key: sk-ant-S3CRET-7\r\n\r\n'",
            r"x-api-key: [redacted]",
        ),
        (
            "headers=[(b'x-goog-api-key', b'AIzaS3CRET-8'), (b'a', b'b')]",
            "b'x-goog-api-key', b'[redacted]'",
        ),
        ("[(b'authorization', b'Bearer sk-S3CRET-9')]", "b'authorization', b'Bearer [redacted]'"),
        # credentials under other headers than the key headers (flow_detail 2 and up)
        ("    Ocp-Apim-Subscription-Key: 0123S3CRET12", "Ocp-Apim-Subscription-Key: [redacted]"),
        ("    x-amz-security-token: IQoJS3CRET13", "x-amz-security-token: [redacted]"),
        ("    Proxy-Authorization: Basic dTpS3CRET14", "Proxy-Authorization: Basic [redacted]"),
        ("    cookie: a=1; session=S3CRET15", "cookie: [redacted]"),
        ("    set-cookie: session=S3CRET16; HttpOnly", "set-cookie: [redacted]"),
        ("[(b'cookie', b'a=1; s=S3CRET17')]", "(b'cookie', b'[redacted]')"),
        (r"b'GET / HTTP/1.1\r\ncookie: a=1; s=S3CRET18\r\n'", r"cookie: [redacted]\r\n'"),
        # a key as a WWW-Authenticate realm: the token is what follows the auth-param
        (
            "    www-authenticate: Bearer realm=Bearer sk-S3CRET-19",
            "Bearer realm=Bearer [redacted]",
        ),
        (
            r"b'HTTP/1.1 401 x\r\nwww-authenticate: Bearer realm=Bearer sk-S3CRET-20\r\n'",
            r"realm=Bearer [redacted]\r\n",
        ),
        ("said: Bearer abcS3CRET21== is not valid", "Bearer [redacted] is not"),  # a token68
        # gateways' and SDKs' own credential headers, named word by word
        ("    x-litellm-api-key: sk-S3CRET24", "x-litellm-api-key: [redacted]"),
        ("    x-portkey-api-key: pk-S3CRET25", "x-portkey-api-key: [redacted]"),
        ("    x-functions-key: S3CRET26", "x-functions-key: [redacted]"),
        ("    api_key: S3CRET27", "api_key: [redacted]"),
        ("    X-Api-Token: S3CRET28", "X-Api-Token: [redacted]"),
        ("    authentication: Bearer S3CRET29", "authentication: Bearer [redacted]"),
        ("[(b'openai-api-key', b'sk-S3CRET30')]", "b'openai-api-key', b'[redacted]'"),
        ("    x-authtoken: S3CRET31", "x-authtoken: [redacted]"),
        ("    x-api-keys: S3CRET32", "x-api-keys: [redacted]"),
        ("    x-passphrase: S3CRET33", "x-passphrase: [redacted]"),
        ("    X-Auth-Request-Access-Token: S3CRET34", "Access-Token: [redacted]"),  # oauth2-proxy
        ("    a-b-c-d-e-f-g-h-api-key: S3CRET35", "a-b-c-d-e-f-g-h-api-key: [redacted]"),
        ("    api__key: S3CRET36", "api__key: [redacted]"),
        ("    x-api-key2: S3CRET37", "x-api-key2: [redacted]"),
        ("    xApiKey: S3CRET38", "xApiKey: [redacted]"),
        ("    x-sessiontoken: S3CRET39", "x-sessiontoken: [redacted]"),
        ("    x-pwd: S3CRET40", "x-pwd: [redacted]"),
        # a header name that is not valid UTF-8, as mitmproxy prints it
        (r"    \xff\xfe: AIzaS3CRET22", r"\xff\xfe: [redacted]"),
        (r"b'GET / HTTP/1.1\r\nHost: x\r\n\xff\xfe: AIzaS3CRET23\r\n\r\n'", r"\xfe: [redacted]\r"),
    ],
)
def test_keys_in_any_spelling_are_redacted(line: str, shown: str) -> None:
    out = redact(line)
    assert "S3CRET" not in out and shown in out


@pytest.mark.parametrize(
    "line",
    [
        "authorization required for this request",
        "monkey=banana&turkey=1",
        "a=b&c=d",
        '    www-authenticate: Bearer realm="api", error="invalid_token"',
        '    WWW-Authenticate: Basic realm="gateway"',
        "    x-ratelimit-remaining-tokens: 149984",  # tokens, not a token
        "    keep-alive: timeout=5",
        "    idempotency-key: inv-0001-item-1",  # request ids and usage named like a key
        "    sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
        "    x-amzn-bedrock-input-token-count: 12",
        "    x-litellm-key-spend: 0.0012",
        "    x-auth-request-email: ops@example.com",
    ],
)
def test_words_that_are_not_keys_are_kept(line: str) -> None:
    assert redact(line) == line


def test_the_log_filter_redacts_what_a_handler_prints() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("test-redact-filter")
    logger.addHandler(handler)
    logger.propagate = False
    found = install_log_filter(logger)
    try:
        logger.warning("Invalid header line: %r", b"Authorization Bearer sk-S3CRET-1")
        logger.warning("plain %s", "text")
        logger.warning("%d broken", "not a number")  # the handler reports it, no raise
    finally:
        remove_log_filter(found, logger)
        logger.removeHandler(handler)
    assert stream.getvalue() == ("Invalid header line: b'[redacted]'\nplain text\n")


def test_a_long_header_name_costs_no_time() -> None:
    """``a_a_a_..._a: key`` made the credential-name pattern backtrack exponentially: 22 s
    of the event loop (every call stalled) for 27 words at flow_detail 2."""
    name = "_".join(["a"] * 40)
    started = time.perf_counter()
    for line in (f"    {name}: key", f"b'GET / HTTP/1.1\\r\\n{name}: key\\r\\n'"):
        assert redact(line) == line
    assert time.perf_counter() - started < 1.0  # microseconds now; hours before


@pytest.mark.parametrize(
    "make",
    [
        lambda n: "\n" * n + "key",  # every line start re-scanned every newline: 17 s at 10 KB
        lambda n: "\\x41" * n + " key",  # a name of escapes scanned from every start
        lambda n: "key=" * n,  # the credential look-ahead run from every key
        lambda n: "b'" + "\\r\\n" * n + "key'",
        lambda n: "password=" * n,
        lambda n: '"api_key": "' * n,
        lambda n: '{"token": "' + "\\x" * n,
        lambda n: "sk-" * n + "a" * n,
    ],
    ids=[
        "newlines",
        "escapes",
        "key-equals",
        "raw-newlines",
        "password-equals",
        "json-members",
        "json-escapes",
        "key-prefixes",
    ],  # fmt: skip
)
def test_a_hostile_line_costs_linear_time(make: Callable[[int], str]) -> None:
    """Lines a client can make the proxy log: quadratic before (11-174 s at 10-30 KB)."""
    started = time.perf_counter()
    redact(make(30_000))
    assert time.perf_counter() - started < 3.0  # ~0.2 s at most now


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        # A provider's error quoting the key it got (a warning the meter logs by default).
        ('provider error event: {"error": {"message": "Incorrect API key provided: '
         'sk-S3CRETalice7f3k9QzX2mW8vR4tL6yN1"}}', "provided: sk-[redacted]"),
        ("API_KEY_INVALID for AIzaS3CRET-abcdefghijklmnop (expired)",
         "for AIza[redacted] (expired)"),
        # A key mint's answer, printed whole at flow_detail 3 and 4.
        ('{"client_secret": {"value": "ek_S3CRET8e408191a1120ab6383263c2", "expires_at": 1}}',
         '"value": "ek_[redacted]"'),
        ('{"name": "auth_tokens/S3CRETabcdef1234567890", "uses": 1}',
         '"auth_tokens/[redacted]"'),
        ('{"api_key": "S3CRET-0123456789"}', '"api_key": "[redacted]"'),
        ("xai-S3CRETabcdefghijklmnop gsk_S3CRETabcdefghijklmnop",
         "xai-[redacted] gsk_[redacted]"),
    ],
)  # fmt: skip
def test_keys_by_their_shape_and_json_members_are_redacted(line: str, shown: str) -> None:
    out = redact(line)
    assert "S3CRET" not in out and shown in out


@pytest.mark.parametrize(
    "line",
    ["scikit-learn and sk-learn", "task-queue-123456789012345", '{"value": "a plain value"}',
     "the week_number_1234567890 column"],
)  # fmt: skip
def test_words_shaped_like_no_key_are_kept(line: str) -> None:
    assert redact(line) == line
