"""Crafted requests: several keys, odd spellings of host and path, keys in the URL,
bodies the include_usage rewrite must not change. A real mitmdump each time."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from aiohttp import web

from tests.conftest import KEYS, UNKNOWN_KEY, ProxyFactory
from tests.support.aioserver import serve
from tests.support.clients import ca_context
from tests.support.proxy import MeterProxy, row_usage, write_catalog
from tests.support.upstream import FakeProvider, encode_body

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
GEMINI = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
NAMED_HOST = "api.fake-llm.test"
ANTHROPIC = {"anthropic-version": "2023-06-01"}


def _catalog(tmp_path: Path, upstream: FakeProvider) -> Path:
    """The fake providers, except that OpenAI's TLS port is known by name only, so a
    CONNECT to its IP literal is recognised by the Host header alone."""
    providers = upstream.catalog_providers()
    openai = next(p for p in providers if p["flavor"] == "openai")
    openai["hosts"] = [
        f"127.0.0.1:{upstream.ports['openai']}",
        f"{NAMED_HOST}:{upstream.tls_ports['openai']}",
    ]
    return write_catalog(
        tmp_path / "catalog.yaml", providers, {n: [k] for n, k in KEYS.items() if n != "carol"}
    )


def _post(
    client: httpx2.Client,
    url: str,
    headers: list[tuple[str, str]],
    body: Any,
) -> httpx2.Response:
    return client.post(url, json=body, headers=headers)


def _cases(up: FakeProvider) -> dict[str, tuple[str, list[tuple[str, str]], Any]]:
    """name -> (url, headers, body): each carries a known key the provider will NOT use,
    or an unknown key in a spelling the meter must still see."""
    openai = up.base_url("openai") + "/v1/chat/completions"
    gemini = up.base_url("gemini") + "/v1beta/models/gemini-2.5-pro:generateContent"
    messages = up.base_url("anthropic") + "/v1/messages"
    alice, bob = KEYS["alice"], KEYS["bob"]
    body_a = {"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": CHAT["messages"]}
    port = up.ports["openai"]
    return {
        "unknown bearer + known x-api-key": (
            openai,
            [("authorization", f"Bearer {UNKNOWN_KEY}"), ("x-api-key", alice)],
            CHAT,
        ),
        "known ?key= + unknown x-goog-api-key": (
            f"{gemini}?key={alice}",
            [("x-goog-api-key", UNKNOWN_KEY)],
            GEMINI,
        ),
        "two authorization headers": (
            openai,
            [("authorization", f"Bearer {alice}"), ("authorization", f"Bearer {bob}")],
            CHAT,
        ),
        "anthropic header on a gemini host": (gemini, [("x-api-key", bob)], GEMINI),
        "x-api-key + bearer on anthropic": (
            messages,
            [("x-api-key", bob), ("authorization", f"Bearer {alice}"), *ANTHROPIC.items()],
            body_a,
        ),
        "%-encoded path": (
            openai.replace("completions", "complet%69ons"),
            [("authorization", f"Bearer {UNKNOWN_KEY}")],
            CHAT,
        ),
        "dot segments": (
            openai.replace("/chat/", "/x/../chat/./"),
            [("authorization", f"Bearer {UNKNOWN_KEY}")],
            CHAT,
        ),
        "host 127.1": (
            openai.replace("127.0.0.1", "127.1"),
            [("authorization", f"Bearer {UNKNOWN_KEY}")],
            CHAT,
        ),
        "host localhost": (
            f"http://localhost:{port}/v1/chat/completions",
            [("authorization", f"Bearer {UNKNOWN_KEY}")],
            CHAT,
        ),
    }


def _rejecting_proxy(start: ProxyFactory, upstream: FakeProvider, tmp_path: Path) -> MeterProxy:
    """A proxy in ``reject`` mode over the fake providers, their exchanges cleared."""
    proxy = start(catalog=_catalog(tmp_path, upstream), options={"meter_unknown_keys": "reject"})
    upstream.reset()
    return proxy


def test_reject_mode_refuses_every_bypass(
    start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    proxy = _rejecting_proxy(start_proxy, fake_provider, tmp_path)
    statuses = {}
    with httpx2.Client(proxy=proxy.url, timeout=30, verify=ca_context(proxy)) as client:
        for name, (url, headers, body) in _cases(fake_provider).items():
            statuses[name] = _post(client, url, headers, body).status_code
        # A CONNECT to the provider's IP literal; only the Host header names it.
        url = f"https://127.0.0.1:{fake_provider.tls_ports['openai']}/v1/chat/completions"
        host = f"{NAMED_HOST}:{fake_provider.tls_ports['openai']}"
        headers = [("host", host), ("authorization", f"Bearer {UNKNOWN_KEY}")]
        statuses["IP-literal CONNECT"] = _post(client, url, headers, CHAT).status_code
        # The control: a request with one known key goes through.
        ok = _post(
            client,
            fake_provider.base_url("openai") + "/v1/chat/completions",
            [("authorization", f"Bearer {KEYS['alice']}")],
            CHAT,
        )
    forwarded = len(fake_provider.exchanges) - 1
    print(f"FAULT crafted requests (reject): {len(statuses)} sent, forwarded={forwarded}")
    assert statuses == dict.fromkeys(statuses, 401)
    assert ok.status_code == 200 and forwarded == 0


def test_record_mode_bills_the_key_the_provider_uses(
    start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    proxy = start_proxy(catalog=_catalog(tmp_path, fake_provider), options={"flow_detail": 2})
    fake_provider.reset()
    request_ids = {}
    with httpx2.Client(proxy=proxy.url, timeout=30) as client:
        for name, (url, headers, body) in _cases(fake_provider).items():
            r = _post(client, url, headers, body)
            assert r.status_code == 200, (name, r.text)
            request_ids[name] = r.headers["x-request-id"]
    rows = proxy.wait_for_events(list(request_ids.values()))
    consumers = {name: row["consumer"] for name, row in zip(request_ids, rows, strict=True)}
    # The billed key is the one the provider authenticates: Anthropic reads x-api-key
    # (bob's) first; in every other case that key is no consumer's, or it is undefined
    # which of two the provider reads.
    assert consumers == dict.fromkeys(request_ids) | {"x-api-key + bearer on anthropic": "bob"}
    print(f"FAULT crafted requests (record): {len(rows)} metered, 0 billed to a bystander")
    # flow_detail=2 printed every URL and header: no raw key may be in the log.
    log = proxy.log_text()
    assert "[redacted]" in log
    assert [k for k in [*KEYS.values(), UNKNOWN_KEY] if k in log] == []


def post_chat(
    proxy: MeterProxy, upstream: FakeProvider, body: bytes, **headers: str
) -> httpx2.Response:
    """``body`` to the fake OpenAI's chat completions as alice, through ``proxy``."""
    upstream.reset()
    with httpx2.Client(proxy=proxy.url, timeout=30) as client:
        return client.post(
            upstream.base_url("openai") + "/v1/chat/completions",
            content=body,
            headers={
                "authorization": f"Bearer {KEYS['alice']}",
                "content-type": "application/json",
                **headers,
            },
        )


@pytest.mark.parametrize(
    "body,sent",
    [
        pytest.param(
            b'{"model":"gpt-4o","messages":[{"role":"user","content":"\\ud800 x"}],'
            b'"stream":true,"temperature":1e400}',
            b'{"model":"gpt-4o","messages":[{"role":"user","content":"\\ud800 x"}],'
            b'"stream":true,"temperature":1e400,"stream_options":{"include_usage":true}}',
            id="lone surrogate and 1e400",
        ),
        pytest.param(
            b'{ "stream" : true , "stream_options" : { "include_usage" : false } ,'
            b' "messages" : [ ] , "n" : 1E400 }\n',
            b'{ "stream" : true , "stream_options" : { "include_usage" : true } ,'
            b' "messages" : [ ] , "n" : 1E400 }\n',
            id="explicit false, odd spacing",
        ),
        pytest.param(
            b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"\\u0073tream":true}',
            b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"\\u0073tream":true,'
            b'"stream_options":{"include_usage":true}}',
            id="the stream key spelled with an escape",
        ),
        pytest.param(
            b'{"model":"gpt-4o","messages":[],"str\\u0065am" : true, "n":1e400}',
            b'{"model":"gpt-4o","messages":[],"str\\u0065am" : true, "n":1e400,'
            b'"stream_options":{"include_usage":true}}',
            id="an escape inside the stream key, 1e400",
        ),
    ],
)
def test_include_usage_rewrite_changes_only_what_it_means_to(
    meter_proxy: MeterProxy, fake_provider: FakeProvider, body: bytes, sent: bytes
) -> None:
    r = post_chat(meter_proxy, fake_provider, body)
    assert r.status_code == 200
    ex = fake_provider.last()
    assert ex.body == sent
    assert b'"usage":{' not in r.content  # the extra usage chunk stays hidden
    [row] = meter_proxy.wait_for_events([ex.request_id])
    assert ex.usage is not None and row_usage(row) == ex.usage
    assert row["streamed"] and not row["estimated"]


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_include_usage_is_added_to_a_content_encoded_request_body(
    meter_proxy: MeterProxy, fake_provider: FakeProvider, encoding: str
) -> None:
    """A client that compresses its request body streams all the same: the body is
    decoded to see ``"stream": true``, the option added, and encoded again the same way
    (before, such a body was never read: no usage, the call estimated)."""
    body = b'{"model":"gpt-4o","messages":[{"role":"user","content":"\\ud800"}],"stream":true}'
    r = post_chat(
        meter_proxy, fake_provider, encode_body(encoding, body), **{"content-encoding": encoding}
    )
    assert r.status_code == 200
    ex = fake_provider.last()
    # The fake (aiohttp) decodes a request body as its Content-Encoding says: the body
    # went on encoded, and only the member was added.
    assert ex.headers["content-encoding"] == encoding
    assert ex.body == body[:-1] + b',"stream_options":{"include_usage":true}}'
    assert b'"usage":{' not in r.content  # the extra usage chunk stays hidden
    [row] = meter_proxy.wait_for_events([ex.request_id])
    assert ex.usage is not None and row_usage(row) == ex.usage
    assert row["streamed"] and not row["estimated"]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            b'{"model":"gpt-4o","messages":[],"metadata":{"stream":true}}', id="nested member"
        ),
        pytest.param(
            b'{"model":"gpt-4o","messages":[],"stream":true,"\\u0073tream":false}',
            id="the last duplicate says false",
        ),
    ],
)
def test_a_stream_true_the_provider_does_not_read_is_no_stream(
    meter_proxy: MeterProxy, fake_provider: FakeProvider, body: bytes
) -> None:
    """Only the top-level ``stream`` member the provider's JSON parser keeps counts."""
    r = post_chat(meter_proxy, fake_provider, body)
    assert r.status_code == 200
    ex = fake_provider.last()
    assert not ex.streamed and ex.body == body
    [row] = meter_proxy.wait_for_events([ex.request_id])
    assert ex.usage is not None and row_usage(row) == ex.usage
    assert not row["streamed"] and not row["estimated"]


def _raw(proxy: MeterProxy, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """One request as bytes no HTTP client library would send (a fragment, a folded
    header line, a malformed line), through the proxy; (status, whole response)."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def _head(method_url: str, host: str, *fields: str, length: int) -> str:
    lines = [f"{method_url} HTTP/1.1", f"Host: {host}", "Connection: close", *fields]
    return "\r\n".join([*lines, "Content-Type: application/json", f"Content-Length: {length}", ""])


def _raw_cases(up: FakeProvider) -> dict[str, tuple[str, str, tuple[str, ...], bytes]]:
    """name -> (absolute URL, host, header lines, body): spellings only a raw client
    sends, each with a key the meter must see (unknown, or a second one)."""
    chat, gem = json.dumps(CHAT).encode(), json.dumps(GEMINI).encode()
    openai = up.base_url("openai") + "/v1/chat/completions"
    gemini = up.base_url("gemini") + "/v1beta/models/gemini-2.5-pro:generateContent"
    alice = KEYS["alice"]
    return {
        "a fragment on the path": (
            openai + "#x", _hostport(openai), (f"Authorization: Bearer {UNKNOWN_KEY}",), chat
        ),
        "a folded authorization line + a known apikey": (
            openai,
            _hostport(openai),
            (f"Authorization: Bearer\r\n {UNKNOWN_KEY}", f"apikey: {alice}"),
            chat,
        ),
        "a %-encoded ?key name + a known apikey": (
            f"{gemini}?%6Bey={UNKNOWN_KEY}", _hostport(gemini), (f"apikey: {alice}",), gem
        ),
    }  # fmt: skip


def _hostport(url: str) -> str:
    return url.split("/")[2]


def test_reject_mode_refuses_what_only_a_raw_client_can_send(
    start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    proxy = _rejecting_proxy(start_proxy, fake_provider, tmp_path)
    statuses = {}
    for name, (url, host, fields, body) in _raw_cases(fake_provider).items():
        statuses[name], _ = _raw(proxy, _head(f"POST {url}", host, *fields, length=len(body)), body)
    print(f"FAULT raw crafted requests (reject): {len(statuses)} sent, forwarded="
          f"{len(fake_provider.exchanges)}")  # fmt: skip
    assert statuses == dict.fromkeys(statuses, 401)
    assert fake_provider.exchanges == []


def test_a_fragment_does_not_keep_a_call_from_being_metered(
    start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    proxy = start_proxy(catalog=_catalog(tmp_path, fake_provider))
    fake_provider.reset()
    openai = fake_provider.base_url("openai") + "/v1/chat/completions"
    body = json.dumps(CHAT).encode()
    head = _head(
        f"POST {openai}#x", _hostport(openai), f"Authorization: Bearer {KEYS['alice']}",
        length=len(body),
    )  # fmt: skip
    status, _ = _raw(proxy, head, body)
    assert status == 200 and fake_provider.last().path == "/v1/chat/completions"
    [row] = proxy.wait_for_events([fake_provider.last().request_id])
    assert row["consumer"] == "alice" and row["input_tokens"] > 0


def test_malformed_requests_never_print_their_keys(
    start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    """mitmproxy logs a line it cannot parse whole, and the dumper prints a failed flow's
    error: neither may show the key in it (flow_detail=2 also prints every header)."""
    proxy = start_proxy(catalog=_catalog(tmp_path, fake_provider), options={"flow_detail": 2})
    openai = fake_provider.base_url("openai") + "/v1/chat/completions"
    gemini = fake_provider.base_url("gemini") + "/v1beta/models/g:generateContent"
    secrets = [f"sk-leak-{n}-0000000000000" for n in range(6)]
    realtime = openai.replace("/chat/completions", "/realtime")
    sent = [
        _head(f"POST {openai}", _hostport(openai), f"Authorization Bearer {secrets[0]}", length=0),
        f"POST {gemini}?key={secrets[1]} HTTP/1.1 x\r\nHost: {_hostport(gemini)}\r\n",
        _head(f"POST {gemini}?%6Bey={secrets[2]}", _hostport(gemini), length=0),
        _head(f"POST {gemini}?access_token={secrets[3]}", _hostport(gemini), length=0),
        _head(
            f"GET {realtime}",
            _hostport(openai),
            "Connection: Upgrade",
            "Upgrade: websocket",
            f"Sec-WebSocket-Protocol: realtime, openai-insecure-api-key.{secrets[4]}",
            length=0,
        ),  # fmt: skip
        f"POST {openai.replace('://', f'://u:{secrets[5]}@')} HTTP/1.1 x\r\nHost: h\r\n",
    ]
    for head in sent:
        _raw(proxy, head)
    proxy.stop()
    log = proxy.log_text()
    assert "Invalid header line" in log or "Bad HTTP request line" in log  # the lines came
    assert "[redacted]" in log
    assert [s for s in secrets if s in log] == []


def test_geminis_openai_compatible_endpoint_is_metered_as_openai(
    start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    """Google's OpenAI-compatible API (``/v1beta/openai/``) on a Gemini host, called with
    the official openai SDK: the Gemini key as a Bearer token, OpenAI's usage object."""
    proxy = _rejecting_proxy(start_proxy, fake_provider, tmp_path)

    def client(key: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=fake_provider.base_url("gemini") + "/v1beta/openai",
            api_key=key,
            max_retries=0,
            http_client=openai.DefaultHttpxClient(proxy=proxy.url),
        )

    messages: list[Any] = [{"role": "user", "content": "hi"}]
    with client(KEYS["alice"]) as alice:
        reply = alice.chat.completions.create(model="gemini-2.5-flash", messages=messages)
        [row] = proxy.wait_for_events([fake_provider.last().request_id])
        assert (row["provider"], row["flavor"], row["consumer"]) == (
            "fake-gemini", "openai", "alice"
        )  # fmt: skip
        assert reply.usage is not None and not row["estimated"]
        assert row["input_tokens"] + row["cached_input_tokens"] == reply.usage.prompt_tokens
        assert row["output_tokens"] == reply.usage.completion_tokens
        # A stream is not rewritten (Google's compatible stream reports usage unasked).
        stream = alice.chat.completions.create(
            model="gemini-2.5-flash", messages=messages, stream=True
        )
        assert [c for c in stream]
        assert b"stream_options" not in fake_provider.last().body
        proxy.wait_for_events([fake_provider.last().request_id])
    with client(UNKNOWN_KEY) as stranger, pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(model="gemini-2.5-flash", messages=messages)
    assert len(fake_provider.exchanges) == 2  # the unknown key was never forwarded


def test_anthropics_openai_compatible_endpoint_is_metered_as_openai(
    start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    """Anthropic's OpenAI SDK compatibility (``base_url=https://api.anthropic.com/v1/``):
    the Anthropic key as a Bearer token, OpenAI's usage object. It passed unmetered."""
    proxy = _rejecting_proxy(start_proxy, fake_provider, tmp_path)
    messages: list[Any] = [{"role": "user", "content": "hi"}]
    with openai.OpenAI(
        base_url=fake_provider.base_url("anthropic") + "/v1",
        api_key=KEYS["alice"],
        max_retries=0,
        http_client=openai.DefaultHttpxClient(proxy=proxy.url),
    ) as alice:
        reply = alice.chat.completions.create(model="claude-sonnet-4-5", messages=messages)
        [row] = proxy.wait_for_events([fake_provider.last().request_id])
        assert (row["provider"], row["flavor"], row["consumer"]) == (
            "fake-anthropic", "openai", "alice"
        )  # fmt: skip
        assert reply.usage is not None and not row["estimated"]
        assert row["input_tokens"] + row["cached_input_tokens"] == reply.usage.prompt_tokens
        assert row["output_tokens"] == reply.usage.completion_tokens
        # Anthropic documents stream_options as supported: the stream is asked for usage.
        stream = alice.chat.completions.create(
            model="claude-sonnet-4-5", messages=messages, stream=True
        )
        assert [c for c in stream]
        assert b'"include_usage":true' in fake_provider.last().body.replace(b" ", b"")
        [row] = proxy.wait_for_events([fake_provider.last().request_id])
        assert not row["estimated"]


def test_anthropics_messages_api_on_an_openai_compatible_host_is_metered(
    start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    """Claude Code on OpenRouter (``ANTHROPIC_BASE_URL=https://openrouter.ai/api``) calls
    ``/api/v1/messages`` with a Bearer token; vLLM and Ollama serve ``/v1/messages``. They
    passed unmetered (only Azure's ``/anthropic/v1/messages`` was known)."""
    proxy = _rejecting_proxy(start_proxy, fake_provider, tmp_path)
    for prefix in ("/api", ""):
        with anthropic.Anthropic(
            base_url=fake_provider.base_url("openai") + prefix,
            auth_token=KEYS["bob"],
            max_retries=0,
            http_client=anthropic.DefaultHttpxClient(proxy=proxy.url),
        ) as bob:
            reply = bob.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=64,
                messages=[{"role": "user", "content": "hi"}],
            )
        [row] = proxy.wait_for_events([fake_provider.last().request_id])
        assert (row["provider"], row["flavor"], row["consumer"]) == (
            "fake-openai", "anthropic", "bob"
        )  # fmt: skip
        assert (row["input_tokens"], row["output_tokens"]) == (
            reply.usage.input_tokens, reply.usage.output_tokens
        )  # fmt: skip
        assert not row["estimated"]


def test_an_injected_key_never_goes_to_a_host_the_client_names(
    start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    """Carol's gateway key is swapped for the real provider key. Sent to another server
    with ``Host: api.openai.com``, the request is recognised as OpenAI's by name only:
    the real key must not be injected (the server would receive it)."""
    catalog = write_catalog(
        tmp_path / "catalog.yaml",
        [],
        {"carol": [KEYS["carol"]]},
        inject={"carol": {"openai": "METERLINE_TEST_OPENAI_KEY"}},
    )
    real = "sk-real-openai-provider-key-77"
    proxy = start_proxy(catalog=catalog, env={"METERLINE_TEST_OPENAI_KEY": real})
    fake_provider.reset()
    attacker = fake_provider.base_url("openai") + "/v1/chat/completions"  # not a provider here
    body = json.dumps(CHAT).encode()
    head = _head(f"POST {attacker}", "api.openai.com", f"apikey: {KEYS['carol']}", length=len(body))
    status, answer = _raw(proxy, head, body)
    assert status == 502 and b"needs the request to go to the provider's own host" in answer
    assert fake_provider.exchanges == []
    assert real not in proxy.log_text()


def test_a_key_that_is_not_utf8_is_refused_not_an_addon_error(
    start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    proxy = _rejecting_proxy(start_proxy, fake_provider, tmp_path)
    openai = fake_provider.base_url("openai") + "/v1/chat/completions"
    body = json.dumps(CHAT).encode()
    key = f"Authorization: Bearer {UNKNOWN_KEY}\xff"
    status, _ = _raw(proxy, _head(f"POST {openai}", _hostport(openai), key, length=len(body)), body)
    assert status == 401 and fake_provider.exchanges == []
    assert "Addon error" not in proxy.log_text()


def _unmetered_calls(up: FakeProvider, key: str) -> dict[str, tuple[str, str, dict[str, str]]]:
    """Calls a provider serves (and bills) that the meter does not price: name -> (method,
    url, headers). The key goes where each flavor's clients put it."""
    bearer = {"authorization": f"Bearer {key}"}
    anthropic = {"x-api-key": key, **ANTHROPIC}
    gemini = up.base_url("gemini") + "/v1beta/models/text-embedding-004"
    realtime = {**bearer, "connection": "Upgrade", "upgrade": "websocket"}
    browser = {  # a browser cannot set Authorization: the key is a subprotocol
        "connection": "Upgrade",
        "upgrade": "websocket",
        "sec-websocket-protocol": f"realtime, openai-insecure-api-key.{key}",
    }
    return {
        "openai model list": ("GET", up.base_url("openai") + "/v1/models", bearer),
        "openai image": ("POST", up.base_url("openai") + "/v1/images/generations", bearer),
        "openai realtime": ("GET", up.base_url("openai") + "/v1/realtime?model=x", realtime),
        "openai realtime, browser": ("GET", up.base_url("openai") + "/v1/realtime", browser),
        "anthropic batch": ("POST", up.base_url("anthropic") + "/v1/messages/batches", anthropic),
        "gemini embedding": ("POST", f"{gemini}:embedContent?key={key}", {}),
    }


def test_reject_mode_covers_the_paths_it_does_not_meter(
    start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    """A stranger's key is refused on every provider path, metered or not: the provider
    would serve an image or a Realtime session to it as readily as a chat completion."""
    proxy = _rejecting_proxy(start_proxy, fake_provider, tmp_path)
    refused: dict[str, tuple[int, str]] = {}
    with httpx2.Client(proxy=proxy.url, timeout=30) as client:
        for name, (method, url, headers) in _unmetered_calls(fake_provider, UNKNOWN_KEY).items():
            r = client.request(method, url, headers=headers, json={"input": "x"})
            refused[name] = (r.status_code, json.dumps(r.json()))
        stranger = len(fake_provider.exchanges)
        known = KEYS["alice"]
        for name, (method, url, headers) in _unmetered_calls(fake_provider, known).items():
            if name != "anthropic batch":  # alice's key is an OpenAI one; bob's below
                client.request(method, url, headers=headers, json={"input": "x"})
        headers = {"x-api-key": KEYS["bob"], **ANTHROPIC}
        client.post(fake_provider.base_url("anthropic") + "/v1/messages/batches", headers=headers)
    print(f"FAULT unmetered paths (reject): {len(refused)} strangers' calls, forwarded={stranger}")
    assert stranger == 0
    assert {name: status for name, (status, _) in refused.items()} == dict.fromkeys(refused, 401)
    assert "authentication_error" in refused["anthropic batch"][1]  # each provider's shape
    assert "UNAUTHENTICATED" in refused["gemini embedding"][1]
    assert "invalid_api_key" in refused["openai image"][1]
    assert len(fake_provider.exchanges) == len(refused)  # known keys pass, as before
    assert UNKNOWN_KEY not in proxy.log_text()
    assert proxy.log_text().count("(a path not metered): unknown key") == len(refused)


def _tunnelled(proxy: MeterProxy, hostport: str, pieces: list[bytes]) -> bytes:
    """A CONNECT tunnel to ``hostport``, then ``pieces`` written one by one, a pause
    between them (so mitmproxy sees the first alone); the whole answer."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=3) as sock:
        sock.sendall(f"CONNECT {hostport} HTTP/1.1\r\nHost: {hostport}\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.3)
        data = b""
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(65536):
                data += chunk
    return data


@pytest.mark.parametrize("mode", ["reject", "record"])
def test_a_tunnel_whose_first_bytes_do_not_look_like_http_is_still_read_as_http(
    start_proxy: ProxyFactory, fake_provider: FakeProvider, tmp_path: Path, mode: str
) -> None:
    """mitmproxy took a connection whose first write was 1-2 bytes, or a blank line, for
    raw TCP (``rawtcp``): the calls went through unread, neither key-checked nor metered
    (a probe: 14 bypasses in reject mode, 2 of 3 known-key calls unmetered)."""
    proxy = start_proxy(
        catalog=_catalog(tmp_path, fake_provider), options={"meter_unknown_keys": mode}
    )
    fake_provider.reset()
    openai = fake_provider.base_url("openai") + "/v1/chat/completions"
    key = UNKNOWN_KEY if mode == "reject" else KEYS["alice"]
    body = json.dumps(CHAT).encode()
    head = _head("POST /v1/chat/completions", _hostport(openai), f"Authorization: Bearer {key}",
                 length=len(body)).encode() + b"\r\n"  # fmt: skip
    answers = [
        _tunnelled(proxy, _hostport(openai), [head[:2], head[2:] + body]),
        _tunnelled(proxy, _hostport(openai), [head[:1], head[1:] + body]),
        _tunnelled(proxy, _hostport(openai), [b"\r\n" + head + body]),
    ]
    statuses = [int(a.split(b" ", 2)[1]) if a else None for a in answers]  # None: no answer
    print(
        f"FAULT split tunnel ({mode}): statuses={statuses} forwarded={len(fake_provider.exchanges)}"
    )
    # The blank line first: mitmproxy's HTTP reader answers nothing, and sends nothing on.
    if mode == "reject":
        assert statuses[:2] == [401, 401] and fake_provider.exchanges == []
    else:  # each one the provider served is metered
        served = [ex.request_id for ex in fake_provider.exchanges]
        assert statuses[:2] == [200, 200] and len(served) >= 2
        assert len(proxy.wait_for_events(served)) == len(served)


@pytest.mark.parametrize(
    "detail,debug", [(2, False), (3, False), (4, True)], ids=["flow2", "flow3", "flow4-debug"]
)
def test_credentials_under_other_headers_are_never_printed(
    start_proxy: ProxyFactory, tmp_path: Path, detail: int, debug: bool
) -> None:
    """Azure API Management's ``Ocp-Apim-Subscription-Key`` and an AWS session token were
    printed raw from flow_detail 2 (only the key headers were redacted), and so were a
    provider's ``www-authenticate: Bearer realm=Bearer <key>`` (``realm=Bearer`` was taken
    for the token) and a key under a header name that is not valid UTF-8."""
    secrets = {
        name: f"S3CRET-{name}-0123456789abcdef"
        for name in ("apim", "amz", "proxyauth", "cookie", "setcookie", "echo", "odd")
    }

    async def echo(request: web.Request) -> web.Response:
        return web.json_response(  # a gateway that quotes the key it got: body at 3 and 4
            {"error": {"message": f"Incorrect API key provided: {request.headers['api-key']}"}},
            status=401,
            headers={
                "www-authenticate": f"Bearer realm=Bearer {secrets['echo']}",
                "set-cookie": f"session={secrets['setcookie']}; HttpOnly",
            },
        )

    with serve({("*", "/{tail:.*}"): echo}) as port:
        provider = {"name": "echo", "flavor": "openai", "hosts": [f"127.0.0.1:{port}"]}
        catalog = write_catalog(tmp_path / "catalog.yaml", [provider], {"alice": [KEYS["alice"]]})
        options: dict[str, Any] = {"flow_detail": detail}
        if debug:
            options |= {"termlog_verbosity": "debug", "proxy_debug": True}
        proxy = start_proxy(catalog=catalog, options=options)
        url = f"http://127.0.0.1:{port}/openai/deployments/gpt4o/chat/completions"
        with httpx2.Client(proxy=proxy.url, timeout=30) as client:
            r = client.post(
                url + "?api-version=2024-10-21",
                json=CHAT,
                headers={
                    "api-key": KEYS["alice"],
                    "Ocp-Apim-Subscription-Key": secrets["apim"],
                    "x-amz-security-token": secrets["amz"],
                    "Proxy-Authorization": f"Basic {secrets['proxyauth']}",
                    "Cookie": f"a=1; session={secrets['cookie']}",
                },
            )
            assert r.status_code == 401
        odd_name = _head(f"GET {url}", f"127.0.0.1:{port}", "\xff\xfe: " + secrets["odd"], length=0)
        _raw(proxy, odd_name)
        proxy.stop()
    log = proxy.log_text()
    assert "[redacted]" in log and "Ocp-Apim-Subscription-Key" in log  # the lines came
    assert [n for n, s in secrets.items() if s in log] == []
    assert KEYS["alice"] not in log
