"""A fake LLM provider on 127.0.0.1 that answers in each provider's documented format.

One server speaks every flavor; the path picks the API:

=============================================  ==========================================
``POST .../chat/completions``                   OpenAI chat (JSON, or SSE when ``stream``;
                                                the usage chunk only with
                                                ``stream_options.include_usage``)
``POST .../responses``                          OpenAI Responses (JSON or SSE)
``POST .../embeddings``                         OpenAI embeddings
``POST /v1/messages``                           Anthropic messages (JSON or SSE)
``POST /v1beta/models/M:generateContent``       Gemini (JSON)
``POST /v1beta/models/M:streamGenerateContent`` Gemini stream: a JSON array, or SSE with
                                                ``?alt=sse``
``GET /plain``                                  not an LLM API: ``ok``
=============================================  ==========================================

Behaviours are switched per request with the ``x-fake`` header (comma separated):
``gzip`` / ``br`` / ``zstd`` / ``deflate`` (encode the body), ``cut`` (drop the connection
halfway through the body), ``malformed`` (garbled JSON / SSE, no usage), ``no-usage``,
``delay=SECONDS`` (between SSE events), ``think=SECONDS`` (before the response
headers), ``status=CODE`` (a provider-shaped error),
``prompt=N`` / ``output=N`` (fixed token figures), ``model=NAME`` (answer as that model, as
a provider does that resolves an alias or an Azure deployment), ``usage-in-choice``
(OpenRouter's usage chunk: a choice with ``finish_reason: null``, not ``choices: []``),
``hold-done`` (``data: [DONE]`` only to a client still there), ``tier=NAME`` (answer as
served at that service tier whatever was asked), ``speed=NAME`` / ``geo=NAME`` (an
Anthropic answer's ``usage.speed`` / ``usage.inference_geo`` whatever was asked: a fast
request that fell back to ``standard``). An Anthropic request that asks for ``speed`` or
``inference_geo`` is answered as run that way, in the message's or ``message_start``'s
``usage``, as the API does. An OpenAI request that
asks for a ``service_tier`` is answered with the tier that served it, as OpenAI does
(``auto`` served at ``default``; a Responses stream's ``response.created`` echoes the asked
one). Output never exceeds the request's
``max_tokens`` (or ``max_completion_tokens``, ``max_output_tokens``, ``maxOutputTokens``).

Every exchange is recorded (:class:`Exchange`): the request as received and the exact
response bytes written, so a test can assert that the client got exactly those, plus
the usage reported in Meterline's token model (:attr:`Exchange.usage`).

Each flavor gets its own pair of ports (plain HTTP and TLS with a self-signed certificate
for 127.0.0.1), because the proxy tells providers apart by host and port:
:meth:`FakeProvider.base_url` and :meth:`FakeProvider.catalog_providers`. The server
runs its own event loop in a daemon thread.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import ipaddress
import json
import random
import ssl
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import brotli
from aiohttp import web

from meterline.catalog import TOKEN_TYPES

try:  # Python 3.14+
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    from backports import zstd  # type: ignore[no-redef]


def _one_hour(figures: dict[str, int]) -> int:
    """The share of the cache writes made for an hour (``ttl: "1h"``), the rest for 5 minutes."""
    return figures["cache_write"] // 3


def _web_searches_asked(data: Any) -> int:
    """Searches the fake runs for an Anthropic request with a ``web_search_*`` server
    tool: its ``max_uses``, else 2."""
    tools = data.get("tools") if isinstance(data, dict) else None
    for tool in tools if isinstance(tools, list) else []:
        if isinstance(tool, dict) and str(tool.get("type", "")).startswith("web_search"):
            uses = tool.get("max_uses")
            return uses if isinstance(uses, int) and uses > 0 else 2
    return 0


def _asks_audio(flavor: str, data: Any) -> tuple[bool, bool]:
    """Whether the request sends audio (OpenAI ``input_audio`` parts, Gemini audio
    ``inlineData``) and asks for audio out (``modalities``, ``responseModalities``)."""
    if not isinstance(data, dict):
        return False, False
    if flavor == "gemini":
        config = data.get("generationConfig") or {}
        out = "AUDIO" in (config.get("responseModalities") or [])
        parts = [p for c in data.get("contents") or [] for p in c.get("parts") or []]
        mimes = [(p.get("inlineData") or {}).get("mimeType", "") for p in parts]
        return any(m.startswith("audio/") for m in mimes), out
    out = "audio" in (data.get("modalities") or [])
    contents = [m.get("content") for m in data.get("messages") or []]
    parts = [p for c in contents if isinstance(c, list) for p in c]
    return any(p.get("type") == "input_audio" for p in parts), out


TOKEN_FIELDS = (*TOKEN_TYPES, "reasoning")
FLAVORS = ("openai", "anthropic", "gemini")


@dataclass
class Exchange:
    """One request the fake provider answered, and exactly what it sent back."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    """Request headers, names lower-cased."""
    body: bytes
    flavor: str = ""
    api: str = ""
    streamed: bool = False
    status: int = 200
    response_headers: dict[str, str] = field(default_factory=dict)
    sent: bytearray = field(default_factory=bytearray)
    """Body bytes as written on the wire (content-encoded when asked)."""
    plain: bytearray = field(default_factory=bytearray)
    """Body bytes before content-encoding."""
    parts: list[bytes] = field(default_factory=list)
    """The body's pieces as generated (SSE events, array elements), before encoding."""
    usage_part: int | None = None
    """Index in :attr:`parts` of OpenAI's separate usage chunk, if one was sent."""
    usage: dict[str, int] | None = None
    """Reported usage in Meterline's model (:data:`TOKEN_FIELDS`)."""
    model: str | None = None
    response_id: str | None = None
    text: str = ""
    complete: bool = False
    """False when the body was cut (behaviour ``cut``)."""

    @property
    def request_id(self) -> str | None:
        """The ``x-request-id`` the fake sent; the proxy stores it as ``request_id``."""
        return self.response_headers.get("x-request-id")

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class _Behaviour:
    encoding: str = ""
    cut: bool = False
    malformed: bool = False
    no_usage: bool = False
    delay: float = 0.0
    think: float = 0.0
    """Seconds before the response headers (a provider generating a whole JSON answer)."""
    status: int = 0
    prompt: int | None = None
    output: int | None = None
    model: str = ""
    sized: bool = False
    """A stream sent with ``Content-Length`` rather than chunked (a buffering gateway)."""
    usage_in_choice: bool = False
    """OpenRouter's usage chunk: after the ``finish_reason`` chunk, it repeats a choice
    with ``finish_reason: null`` (not ``choices: []``)."""
    hold_done: bool = False
    """Send a stream's last part (``data: [DONE]``) only if the client is still there:
    wait until the proxy closes the connection (bounded), then end without it."""
    served_tier: str = ""
    """The service tier the answer names whatever the request asked (``tier=NAME``; a
    provider that serves a ``priority`` request at ``default`` under load)."""
    served_speed: str = ""
    """Anthropic's ``usage.speed`` whatever the request asked (``speed=NAME``)."""
    served_geo: str = ""
    """Anthropic's ``usage.inference_geo`` whatever the request asked (``geo=NAME``)."""
    pad: int = 0
    """Bytes of base64 payload before the usage: an embedding (OpenAI), an image part in
    the last chunk (Gemini): a body or SSE event bigger than the proxy reads whole."""

    @classmethod
    def parse(cls, header: str) -> _Behaviour:
        b = cls()
        for token in (t.strip() for t in header.split(",") if t.strip()):
            name, _, value = token.partition("=")
            if name in ("gzip", "br", "zstd", "deflate"):
                b.encoding = name
            elif name == "cut":
                b.cut = True
            elif name == "malformed":
                b.malformed = True
            elif name == "no-usage":
                b.no_usage = True
            elif name == "sized":
                b.sized = True
            elif name == "usage-in-choice":
                b.usage_in_choice = True
            elif name == "hold-done":
                b.hold_done = True
            elif name == "delay":
                b.delay = float(value)
            elif name == "think":
                b.think = float(value)
            elif name == "status":
                b.status = int(value)
            elif name == "model":
                b.model = value
            elif name == "pad":
                b.pad = int(value)
            elif name == "tier":
                b.served_tier = value
            elif name == "speed":
                b.served_speed = value
            elif name == "geo":
                b.served_geo = value
            elif name in ("prompt", "output"):  # fixed token figures
                setattr(b, name, int(value))
            else:
                raise ValueError(f"x-fake: unknown behaviour {token!r}")
        return b


class _Encoder:
    """Content-encodes a body piece by piece, flushing so each piece can be decoded at once."""

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "gzip":
            self._z = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        elif name == "deflate":
            self._z = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS)
        elif name == "br":
            self._br = brotli.Compressor()
        elif name == "zstd":
            self._zs = zstd.ZstdCompressor()

    def piece(self, data: bytes) -> bytes:
        if self.name in ("gzip", "deflate"):
            return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)
        if self.name == "br":
            return self._br.process(data) + self._br.flush()
        if self.name == "zstd":
            return self._zs.compress(data, zstd.ZstdCompressor.FLUSH_BLOCK)
        return data

    def end(self) -> bytes:
        if self.name in ("gzip", "deflate"):
            return self._z.flush(zlib.Z_FINISH)
        if self.name == "br":
            return self._br.finish()
        if self.name == "zstd":
            return self._zs.flush(zstd.ZstdCompressor.FLUSH_FRAME)
        return b""


def encode_body(name: str, data: bytes) -> bytes:
    """Whole-body encoding (what a JSON response uses). Deterministic: gzip's header
    holds a time, which is 0 here (a test that encoded the same body a second later
    than the fake provider got other bytes)."""
    if name == "gzip":
        return gzip.compress(data, mtime=0)
    if name == "deflate":
        return zlib.compress(data)
    if name == "br":
        return brotli.compress(data)
    if name == "zstd":
        return zstd.compress(data)
    return data


async def _client_gone(request: web.Request, timeout: float = 10.0) -> None:
    """Wait until the connection closes (the proxy's client left), at most ``timeout``
    seconds; then drop it, so an unended body never reads as complete."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(0.02)
    if request.transport is not None:
        request.transport.abort()


def _served_tier(data: Any, served: str = "") -> dict[str, str]:
    """OpenAI's ``service_tier`` answer field for a request body: the tier it asked for
    (``auto``: ``default``), none when it asked for none; ``served`` whatever it asked."""
    if served:
        return {"service_tier": served}
    asked = data.get("service_tier") if isinstance(data, dict) else None
    if not isinstance(asked, str):
        return {}
    return {"service_tier": "default" if asked == "auto" else asked}


def _served_as(data: Any, b: _Behaviour) -> dict[str, str]:
    """Anthropic's ``usage.speed`` and ``usage.inference_geo`` for a request body: how it
    asked to run (``speed``, ``inference_geo``), or the behaviour's whatever it asked;
    neither when it asked for neither."""
    asked = data if isinstance(data, dict) else {}
    out = {}
    for name, forced in (("speed", b.served_speed), ("inference_geo", b.served_geo)):
        value = forced or asked.get(name)
        if isinstance(value, str) and value:
            out[name] = value
    return out


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    payload = data if isinstance(data, str) else json.dumps(data)
    return f"{head}data: {payload}\n\n".encode()


def make_self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost; returns (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-provider")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "upstream-cert.pem", directory / "upstream-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class LoopbackServers:
    """An aiohttp app on its own event-loop thread, served on ``host`` (127.0.0.1, or
    ``::1`` for an IPv6-only server) under each of ``names`` on a plain and a TLS port (a
    self-signed certificate in ``workdir``). Subclasses answer in ``_handle``; start with
    :meth:`start` or as a context manager."""

    def __init__(self, workdir: Path, names: list[str], *, host: str = "127.0.0.1") -> None:
        self.workdir = Path(workdir)
        self.names = names
        self.host = host
        self.netloc_host = f"[{host}]" if ":" in host else host
        """The host as a URL or ``Host`` header writes it (an IPv6 address in brackets)."""
        self.ports: dict[str, int] = {}
        self.tls_ports: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        # A request body up to 64 MiB, as a provider takes (aiohttp's default is 1 MiB).
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        cert, key = make_self_signed(self.workdir)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        for name in self.names:
            for tls in (False, True):
                site = web.TCPSite(self._runner, self.host, 0, ssl_context=ctx if tls else None)
                await site.start()
                port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
                (self.tls_ports if tls else self.ports)[name] = port

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def base_url(self, name: str, *, tls: bool = False) -> str:
        """Where to send ``name``'s requests (each has its own plain and TLS port)."""
        if tls:
            return f"https://{self.netloc_host}:{self.tls_ports[name]}"
        return f"http://{self.netloc_host}:{self.ports[name]}"


class FakeProvider(LoopbackServers):
    """Start with :meth:`start` (or as a context manager); inspect :attr:`exchanges`."""

    def __init__(self, workdir: Path, *, seed: int | None = None, host: str = "127.0.0.1") -> None:
        super().__init__(workdir, list(FLAVORS), host=host)
        self.exchanges: list[Exchange] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def catalog_providers(self) -> list[dict[str, Any]]:
        """Catalog ``providers`` entries that make the proxy meter this server."""
        return [
            {
                "name": f"fake-{flavor}",
                "flavor": flavor,
                "hosts": [
                    f"{self.netloc_host}:{self.ports[flavor]}",
                    f"{self.netloc_host}:{self.tls_ports[flavor]}",
                ],
            }
            for flavor in FLAVORS
        ]

    def reset(self) -> None:
        with self._lock:
            self.exchanges.clear()

    def last(self) -> Exchange:
        return self.exchanges[-1]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Exchange]:
        """Wait until ``count`` exchanges are complete (written or cut), return them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                done = [x for x in self.exchanges if x.complete or x.sent or x.status >= 400]
            if len(done) >= count:
                return done
            time.sleep(0.01)
        raise TimeoutError(f"expected {count} exchanges, have {len(self.exchanges)}")

    # -- dispatch ------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        ex = Exchange(
            method=request.method,
            path=request.path,
            query=request.query_string,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
        )
        with self._lock:
            self.exchanges.append(ex)
        if request.method == "GET" and request.path == "/plain":
            ex.plain += b"ok"
            ex.sent += b"ok"
            ex.complete = True
            return web.Response(body=b"ok", content_type="text/plain")
        behaviour = _Behaviour.parse(request.headers.get("x-fake", ""))
        path = request.path
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            data = {}
        if path.endswith("/chat/completions"):
            ex.flavor, ex.api = "openai", "chat"
        elif path.endswith("/responses"):
            ex.flavor, ex.api = "openai", "responses"
        elif path.endswith("/embeddings"):
            ex.flavor, ex.api = "openai", "embeddings"
        elif path.endswith("/v1/messages"):
            ex.flavor, ex.api = "anthropic", "messages"
        elif path.endswith(":generateContent") or path.endswith(":streamGenerateContent"):
            ex.flavor, ex.api = "gemini", "generate"
        else:
            ex.status = 404
            return web.json_response({"error": {"message": "no such API"}}, status=404)
        ex.model = behaviour.model or (
            path.rsplit("/", 1)[-1].split(":")[0]
            if ex.flavor == "gemini"
            else str(data.get("model", "fake-model"))
        )
        if behaviour.think:
            await asyncio.sleep(behaviour.think)
        if behaviour.status:
            return await self._error(request, ex, behaviour)
        words = [f"Fake {ex.flavor} answer", " number", f" {len(self.exchanges)}", " to", " you."]
        ex.text = "".join(words)
        if ex.api == "embeddings":
            words = []
            ex.text = ""
        build = getattr(self, f"_{ex.flavor}_{ex.api}")
        if ex.flavor == "gemini":
            ex.streamed = path.endswith(":streamGenerateContent")
        else:
            ex.streamed = bool(data.get("stream"))
        parts, content_type = build(ex, data, words, behaviour, request)
        return await self._send(request, ex, parts, content_type, behaviour)

    async def _error(self, request: web.Request, ex: Exchange, b: _Behaviour) -> web.Response:
        ex.status = b.status
        if ex.flavor == "anthropic":
            err: dict[str, Any] = {
                "type": "error",
                "error": {"type": "rate_limit_error", "message": "fake error"},
            }
        elif ex.flavor == "gemini":
            err = {"error": {"code": b.status, "message": "fake error", "status": "UNAVAILABLE"}}
        else:
            err = {"error": {"message": "fake error", "type": "server_error", "code": None}}
        raw = json.dumps(err).encode()
        ex.parts = [raw]
        ex.plain += raw
        ex.sent += raw
        ex.complete = True
        ex.response_headers = {
            "content-type": "application/json",
            "x-request-id": f"req_{uuid.uuid4().hex[:16]}",
        }
        return web.Response(status=b.status, body=raw, headers=ex.response_headers)

    async def _send(
        self,
        request: web.Request,
        ex: Exchange,
        parts: list[bytes],
        content_type: str,
        b: _Behaviour,
    ) -> web.StreamResponse:
        ex.parts = parts
        headers = {"content-type": content_type, "x-request-id": f"req_{uuid.uuid4().hex[:16]}"}
        if b.encoding:
            headers["content-encoding"] = b.encoding
        ex.response_headers = headers
        if b.cut:  # half the events, or half of a single JSON body
            half = [parts[0][: len(parts[0]) // 2]] if len(parts) == 1 else None
            parts = half or parts[: len(parts) // 2]
        if not ex.streamed and not b.cut:
            plain = b"".join(parts)
            raw = encode_body(b.encoding, plain)
            ex.plain += plain
            ex.sent += raw
            ex.complete = True
            return web.Response(status=ex.status, body=raw, headers=headers)
        resp = web.StreamResponse(status=ex.status, headers=headers)
        if b.sized and not b.encoding:
            resp.content_length = sum(len(p) for p in parts)
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        encoder = _Encoder(b.encoding)
        for i, part in enumerate(parts):
            if i and b.delay:
                await asyncio.sleep(b.delay)
            if b.hold_done and i == len(parts) - 1:
                await _client_gone(request)
                return resp
            raw = encoder.piece(part)
            ex.plain += part
            ex.sent += raw
            await resp.write(raw)
        if b.cut:
            await asyncio.sleep(0.05)  # let the written bytes leave before the reset
            assert request.transport is not None
            request.transport.abort()
            return resp
        tail = encoder.end()
        if tail:
            ex.sent += tail
            await resp.write(tail)
        await resp.write_eof()
        ex.complete = True
        return resp

    # -- usage -------------------------------------------------------------------------

    def _figures(self, ex: Exchange, b: _Behaviour) -> dict[str, int]:
        r = self._rng
        prompt = r.randint(20, 900)
        output = r.randint(5, 300) if ex.api != "embeddings" else 0
        figures = {
            "prompt": prompt,
            "cached": r.randint(0, prompt // 2),
            "cache_write": r.randint(0, 200) if ex.flavor == "anthropic" else 0,
            "output": output,
            "reasoning": r.randint(0, output // 2),
            "audio_in": 0,  # uncached prompt audio, when the request sends audio
            "audio_out": 0,  # output audio, when the request asks for it
            "web_search": 0,  # server-side web searches (Anthropic's web_search tool)
        }
        if ex.api == "embeddings":
            figures["cached"] = figures["reasoning"] = 0
        if b.prompt is not None:
            figures.update(prompt=b.prompt, cached=0, cache_write=0)
        if b.output is not None:
            figures.update(output=b.output, reasoning=0)
        # Like the real providers, never more output than the request allows.
        try:
            data = ex.json if ex.body and ex.api != "embeddings" else None
        except ValueError:  # an encoded or broken request body
            data = None
        if isinstance(data, dict):
            config = data.get("generationConfig") or {}
            for cap in (
                data.get("max_tokens"),
                data.get("max_completion_tokens"),
                data.get("max_output_tokens"),
                config.get("maxOutputTokens") if isinstance(config, dict) else None,
            ):
                if isinstance(cap, int) and cap < figures["output"]:
                    figures["output"] = cap
                    figures["reasoning"] = min(figures["reasoning"], cap)
        if ex.flavor == "anthropic":
            figures["web_search"] = _web_searches_asked(data)
        audio_in, audio_out = _asks_audio(ex.flavor, data)
        if audio_in:
            figures["audio_in"] = (figures["prompt"] - figures["cached"]) // 2
        if audio_out:  # reasoning stays a share of the text output
            figures["audio_out"] = (figures["output"] - figures["reasoning"]) // 2
        if not b.no_usage and not b.malformed:
            ex.usage = self._unified(ex.flavor, figures)
        return figures

    @classmethod
    def _unified(cls, flavor: str, f: dict[str, int]) -> dict[str, int]:
        """The provider's figures in Meterline's token model (see addons/metering/usage.py)."""
        # The fake never reports cached audio (its cache reads are text).
        tokens = cls._unified_tokens(flavor, f)
        return {**tokens, "web_search": f["web_search"], "cached_audio_input": 0}

    @staticmethod
    def _unified_tokens(flavor: str, f: dict[str, int]) -> dict[str, int]:
        if flavor == "anthropic":  # input_tokens excludes cache reads and writes
            return {
                "input": f["prompt"],
                "cached_input": f["cached"],
                "cache_write": f["cache_write"] - _one_hour(f),
                "cache_write_1h": _one_hour(f),
                "audio_input": 0,
                "output": f["output"],
                "audio_output": 0,
                "reasoning": 0,
            }
        if flavor == "gemini":  # candidatesTokenCount excludes thoughtsTokenCount
            return {
                "input": f["prompt"] - f["cached"] - f["audio_in"],
                "cached_input": f["cached"],
                "cache_write": 0,
                "cache_write_1h": 0,
                "audio_input": f["audio_in"],
                "output": f["output"] - f["audio_out"] + f["reasoning"],
                "audio_output": f["audio_out"],
                "reasoning": f["reasoning"],
            }
        return {  # OpenAI: prompt includes cached and audio, completion reasoning and audio
            "input": f["prompt"] - f["cached"] - f["audio_in"],
            "cached_input": f["cached"],
            "cache_write": 0,
            "cache_write_1h": 0,
            "audio_input": f["audio_in"],
            "output": f["output"] - f["audio_out"],
            "audio_output": f["audio_out"],
            "reasoning": f["reasoning"],
        }

    # -- OpenAI --------------------------------------------------------------------------

    def _openai_chat(self, ex, data, words, b, request):  # type: ignore[no-untyped-def]
        f = self._figures(ex, b)
        ex.response_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        usage = {
            "prompt_tokens": f["prompt"],
            "completion_tokens": f["output"],
            "total_tokens": f["prompt"] + f["output"],
            "prompt_tokens_details": {"cached_tokens": f["cached"], "audio_tokens": f["audio_in"]},
            "completion_tokens_details": {
                "reasoning_tokens": f["reasoning"],
                "audio_tokens": f["audio_out"],
            },
        }
        base = {
            "id": ex.response_id,
            "created": created,
            "model": ex.model,
            **_served_tier(data, b.served_tier),
        }
        if not ex.streamed:
            body: dict[str, Any] = {
                **base,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": ex.text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "system_fingerprint": "fp_fake",
            }
            if not b.no_usage:
                body["usage"] = usage
            raw = json.dumps(body).encode()
            if b.malformed:
                raw = raw[: len(raw) // 2] + b"<<garbage>>"
            return [raw], "application/json"
        include = bool((data.get("stream_options") or {}).get("include_usage"))
        chunk = {**base, "object": "chat.completion.chunk", "system_fingerprint": "fp_fake"}
        if include:
            chunk["usage"] = None
        parts = [
            _sse(
                {
                    **chunk,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None,
                        }
                    ],
                }
            )
        ]
        for w in words:
            parts.append(
                _sse(
                    {
                        **chunk,
                        "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}],
                    }
                )
            )
        parts.append(
            _sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        )
        if include and not b.no_usage:
            ex.usage_part = len(parts)
            choices: list[Any] = []
            if b.usage_in_choice:
                choices = [{"index": 0, "delta": {"content": ""}, "finish_reason": None}]
            parts.append(_sse({**chunk, "choices": choices, "usage": usage}))
        elif not b.malformed:
            ex.usage = None  # not asked for: OpenAI does not report it
        if b.malformed:
            parts.insert(2, b"data: {not json at all\n\n")
            ex.usage = None
            if ex.usage_part is not None:
                parts[ex.usage_part + 1] = b'data: {"usage": garbled}\n\n'
                ex.usage_part = None
        parts.append(b"data: [DONE]\n\n")
        return parts, "text/event-stream; charset=utf-8"

    def _openai_responses(self, ex, data, words, b, request):  # type: ignore[no-untyped-def]
        f = self._figures(ex, b)
        ex.response_id = f"resp_{uuid.uuid4().hex}"
        usage = {
            "input_tokens": f["prompt"],
            "input_tokens_details": {"cached_tokens": f["cached"]},
            "output_tokens": f["output"],
            "output_tokens_details": {"reasoning_tokens": f["reasoning"]},
            "total_tokens": f["prompt"] + f["output"],
        }
        msg_id = f"msg_{uuid.uuid4().hex}"
        message = {
            "id": msg_id,
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": ex.text, "annotations": []}],
        }
        response: dict[str, Any] = {
            "id": ex.response_id,
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": ex.model,
            "output": [message],
            "usage": None if b.no_usage else usage,
            **_served_tier(data, b.served_tier),
        }
        if not ex.streamed:
            raw = json.dumps(response).encode()
            if b.malformed:
                raw = raw[: len(raw) // 2] + b"<<garbage>>"
            return [raw], "application/json"
        # The documented sequence for one text message: the response, its output item,
        # the item's content part, the text deltas, then each closed in turn (the official
        # SDK's ``responses.stream()`` helper refuses a delta for an item never added).
        seq = iter(range(10_000))
        pending = {**response, "status": "in_progress", "output": [], "usage": None}
        if "service_tier" in data:
            pending["service_tier"] = data["service_tier"]  # the asked one, "auto" too
        text_part = message["content"][0]
        at = {"item_id": msg_id, "output_index": 0, "content_index": 0}

        def event(kind: str, **fields: Any) -> bytes:
            return _sse({"type": kind, "sequence_number": next(seq), **fields}, kind)

        parts = [
            event("response.created", response=pending),
            event("response.in_progress", response=pending),
            event(
                "response.output_item.added",
                output_index=0,
                item={**message, "status": "in_progress", "content": []},
            ),
            event("response.content_part.added", **at, part={**text_part, "text": ""}),
        ]
        for w in words:
            parts.append(event("response.output_text.delta", **at, delta=w, logprobs=[]))
        parts += [
            event("response.output_text.done", **at, text=ex.text, logprobs=[]),
            event("response.content_part.done", **at, part=text_part),
            event("response.output_item.done", output_index=0, item=message),
        ]
        if b.malformed:
            parts.insert(1, b"event: response.output_text.delta\ndata: {broken\n\n")
            response["usage"] = None
        parts.append(event("response.completed", response=response))
        return parts, "text/event-stream; charset=utf-8"

    def _openai_embeddings(self, ex, data, words, b, request):  # type: ignore[no-untyped-def]
        f = self._figures(ex, b)
        inputs = data.get("input")
        count = len(inputs) if isinstance(inputs, list) else 1
        body: dict[str, Any] = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": [0.01 * i, -0.5, 0.25]}
                for i in range(count)
            ],
            "model": ex.model,
        }
        if b.pad:  # the SDK's default encoding_format: base64
            body["data"][0]["embedding"] = "A" * b.pad
        if not b.no_usage:
            body["usage"] = {"prompt_tokens": f["prompt"], "total_tokens": f["prompt"]}
        raw = json.dumps(body).encode()
        if b.malformed:
            raw = raw[: len(raw) // 2] + b"<<garbage>>"
        return [raw], "application/json"

    # -- Anthropic -----------------------------------------------------------------------

    def _anthropic_messages(self, ex, data, words, b, request):  # type: ignore[no-untyped-def]
        f = self._figures(ex, b)
        ex.response_id = f"msg_{uuid.uuid4().hex[:24]}"
        usage = {
            "input_tokens": f["prompt"],
            "cache_creation_input_tokens": f["cache_write"],
            "cache_creation": {
                "ephemeral_5m_input_tokens": f["cache_write"] - _one_hour(f),
                "ephemeral_1h_input_tokens": _one_hour(f),
            },
            "cache_read_input_tokens": f["cached"],
            "output_tokens": f["output"],
        }
        if f["web_search"]:
            usage["server_tool_use"] = {"web_search_requests": f["web_search"]}
        usage.update(_served_as(data, b))
        message: dict[str, Any] = {
            "id": ex.response_id,
            "type": "message",
            "role": "assistant",
            "model": ex.model,
            "content": [{"type": "text", "text": ex.text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        if not ex.streamed:
            if b.no_usage:
                del message["usage"]
            raw = json.dumps(message).encode()
            if b.malformed:
                raw = raw[: len(raw) // 2] + b"<<garbage>>"
            return [raw], "application/json"
        start = {**message, "content": [], "stop_reason": None, "usage": {**usage}}
        start["usage"]["output_tokens"] = 1
        if f["web_search"]:  # as the API does: none yet at the start, all in message_delta
            start["usage"]["server_tool_use"] = {"web_search_requests": 0}
        if b.no_usage:
            del start["usage"]
        parts = [
            _sse({"type": "message_start", "message": start}, "message_start"),
            _sse(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
                "content_block_start",
            ),
            _sse({"type": "ping"}, "ping"),
        ]
        for w in words:
            parts.append(
                _sse(
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": w},
                    },
                    "content_block_delta",
                )
            )
        parts.append(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
        delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        }
        if not b.no_usage:
            delta["usage"] = {"output_tokens": f["output"]}
            if f["web_search"]:  # cumulative, repeated with the input figures
                delta["usage"] = {**usage, "output_tokens": f["output"]}
        parts.append(_sse(delta, "message_delta"))
        parts.append(_sse({"type": "message_stop"}, "message_stop"))
        if b.malformed:
            parts[0] = b"event: message_start\ndata: {garbled json\n\n"
            parts[-2] = b"event: message_delta\ndata: not json either\n\n"
        return parts, "text/event-stream; charset=utf-8"

    # -- Gemini --------------------------------------------------------------------------

    def _gemini_generate(self, ex, data, words, b, request):  # type: ignore[no-untyped-def]
        f = self._figures(ex, b)
        ex.response_id = uuid.uuid4().hex[:22]

        def usage_meta(candidates: int, thoughts: int) -> dict[str, Any]:
            meta: dict[str, Any] = {
                "promptTokenCount": f["prompt"],
                "candidatesTokenCount": candidates,
                "totalTokenCount": f["prompt"] + candidates + thoughts,
            }
            if f["cached"]:
                meta["cachedContentTokenCount"] = f["cached"]
            if thoughts:
                meta["thoughtsTokenCount"] = thoughts
            if f["audio_in"]:
                meta["promptTokensDetails"] = [
                    {"modality": "TEXT", "tokenCount": f["prompt"] - f["audio_in"]},
                    {"modality": "AUDIO", "tokenCount": f["audio_in"]},
                ]
            if f["audio_out"] and candidates == f["output"]:  # the final figures
                meta["candidatesTokensDetails"] = [
                    {"modality": "TEXT", "tokenCount": candidates - f["audio_out"]},
                    {"modality": "AUDIO", "tokenCount": f["audio_out"]},
                ]
            return meta

        def chunk(text: str, final: bool, candidates: int, thoughts: int) -> dict[str, Any]:
            cand: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
            if final:
                cand["finishReason"] = "STOP"
                if b.pad:
                    image = {"inlineData": {"mimeType": "image/png", "data": "A" * b.pad}}
                    cand["content"]["parts"].append(image)
            obj: dict[str, Any] = {"candidates": [cand]}
            if not b.no_usage:
                obj["usageMetadata"] = usage_meta(candidates, thoughts)
            obj["modelVersion"] = ex.model
            obj["responseId"] = ex.response_id
            return obj

        if not ex.streamed:
            raw = json.dumps(chunk(ex.text, True, f["output"], f["reasoning"]), indent=2).encode()
            if b.malformed:
                raw = raw[: len(raw) // 2] + b"<<garbage>>"
            return [raw], "application/json; charset=UTF-8"
        objs = [
            chunk(w, i == len(words) - 1, f["output"] if i == len(words) - 1 else i + 1, 0)
            for i, w in enumerate(words)
        ]
        # Reasoning is reported with the final chunk.
        if not b.no_usage:
            objs[-1]["usageMetadata"] = usage_meta(f["output"], f["reasoning"])
        if request.query.get("alt") == "sse":
            parts = [f"data: {json.dumps(o)}\r\n\r\n".encode() for o in objs]
            if b.malformed:
                parts.insert(1, b"data: {oops\r\n\r\n")
                parts[-1] = b'data: {"usageMetadata": broken}\r\n\r\n'
            return parts, "text/event-stream"
        rendered = [json.dumps(o, indent=2) for o in objs]
        parts = [("[" + rendered[0]).encode()]
        parts += [(",\r\n" + r).encode() for r in rendered[1:]]
        parts.append(b"]")
        if b.malformed:
            parts.insert(1, b",\r\n{not: valid json")
        return parts, "application/json; charset=UTF-8"
