"""State of one metered flow (streamed, buffered or rejected), and what the hooks read of it.

:class:`FlowMeter` is created in ``requestheaders`` for a billed provider call. For a
streamed response mitmproxy calls it with each body chunk (the hot path: the chunk goes
straight back, the metering work is queued on :class:`~addons.metering.deferred.DeferredWork`);
a buffered body is read whole at the end; a rejected request keeps it only to build the
refusal.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from mitmproxy import http

from addons.metering import background, bounded, events, jsoncodec, keys, providers, routes
from addons.metering.decoding import IncrementalDecoder, OutputLimitExceeded
from addons.metering.extract import new_extractor
from addons.metering.replyend import EndWatch
from addons.metering.streamfilter import (
    UsageStreamFilter,
    anthropic_rule,
    chat_rule,
    responses_rule,
)
from addons.metering.streamopts import add_include_usage, api_version_takes_stream_options
from addons.metering.usage import UsageExtractor

if TYPE_CHECKING:
    from addons.meter import Meter

#: Ollama's native chat and generate stream unless the request says ``"stream": false``.
_OLLAMA_STREAMS = re.compile(r"^/api/(?:chat|generate)/?$")
_INCLUDE_USAGE_PATH = re.compile(r"/(?:chat/)?completions/?$")


class FlowMeter:
    """State of one metered flow: streamed (mitmproxy calls it with each response body
    chunk), buffered (read whole at the end) or rejected (answered by the proxy).

    Only what must happen before bytes move is done in the hooks (provider lookup, key
    policy, request rewrite); the extractor and decoder are created on the first queued
    chunk, and everything about the event (host, status, ids, estimate) is read in
    :mod:`addons.metering.finish`, after the client has its bytes.
    """

    __slots__ = (
        "meter",
        "work",
        "flow",
        "provider",
        "identity",
        "reject",
        "inject_env",
        "inject_refused",
        "injected_key",
        "misrouted",
        "pinned_model",
        "drop_usage",
        "stream_filter",
        "t_request",
        "t_first_byte",
        "t_done",
        "started",
        "decoder",
        "decode_failed",
        "extractor",
        "response_headers",
        "billed_path",
        "sse",
        "raw_bytes",
        "fed_bytes",
        "keys_presented",
        "tap",
        "end",
        "finished",
        "_body",
        "_over_budget",
        "_json",
        "_streaming",
    )

    def __init__(
        self,
        meter: Meter,
        flow: http.HTTPFlow,
        provider: providers.MeteredProvider,
        identity: keys.Identity,
    ) -> None:
        self.meter = meter
        self.work = meter.deferred
        self.flow = flow
        self.provider = provider
        self.identity = identity
        self.reject = False
        self.inject_env: str | None = None
        self.inject_refused = False
        """Injection asked for, but the provider was found by name only (Host, SNI)."""
        self.injected_key: bytes | None = None
        """The provider key the proxy put on the request: masked in the response and the
        log (:mod:`addons.metering.keyecho`)."""
        self.misrouted: str | None = None
        """Why a gateway route's call cannot go to its provider's host (refused, 502)."""
        self.pinned_model: str | None = None
        self.drop_usage = False
        self.stream_filter: UsageStreamFilter | None = None
        self.t_request: float | None = None
        self.t_first_byte: float | None = None
        self.t_done: float | None = None
        self.started = False
        self.decoder: IncrementalDecoder | None = None
        self.decode_failed: str | None = None
        self.extractor: UsageExtractor | None = None
        self.response_headers: dict[str, str] = {}
        self.billed_path = providers.normalise_path(flow.request.path)
        self.sse = False
        self.raw_bytes = 0
        self.fed_bytes = 0
        self.keys_presented = 0
        self.tap = background.tap_for(provider.flavor, flow.request.method, self.billed_path)
        """A Responses API create or read (background responses are billed when read)."""
        self.end: EndWatch | None = None
        self.finished = False
        """Metered: a flow gets one event, however many ends it is told of."""
        self._body: bytes | None = None
        self._over_budget: int | None = None
        self._json: Any = _UNPARSED
        self._streaming: bool | None = None

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        """The hot path: return the chunk at once; queue the metering work."""
        if chunk:
            if self.t_first_byte is None:
                self.t_first_byte = time.time()
            if self.end is not None and self.end.completes(chunk):
                self.meter.finish_early(self, chunk)
            else:
                self.work.defer(self.consume, chunk)
            if self.stream_filter is None:
                return chunk
            out = self.stream_filter.feed(chunk)
        elif self.stream_filter is None:
            return chunk
        else:
            out = self.stream_filter.flush()
        # An empty chunk would end an HTTP/1.1 chunked body early: send nothing instead.
        return out if out else []

    # -- off the forwarding path ------------------------------------------------------

    @property
    def path(self) -> str:
        return self.flow.request.path

    def request_body(self) -> bytes:
        """The request body, decoded with bounded output (a request may be a bomb too).

        A body with a ``Content-Encoding`` may decode to :func:`bounded.decode_budget`
        bytes, the rule a JSON response follows. One that decodes past it reads as empty
        here, and :meth:`undecodable_budget` says so: ``request`` refuses it unsent (the
        meter cannot read its model or size: forwarded, it passed limits unmetered)."""
        if self._body is None:
            req = self.flow.request
            raw = req.raw_content or b""
            encoding = raw_header(req.headers, b"content-encoding") or ""
            self._body = raw
            if encoding and raw:
                budget = bounded.decode_budget(False, len(raw))
                try:
                    decoder = IncrementalDecoder(encoding, max_output=budget)
                    self._body = decoder.decode(raw) + decoder.flush()
                except OutputLimitExceeded:
                    self._body = b""
                    self._over_budget = budget
                except ValueError:  # unknown or corrupt content-encoding: as sent
                    pass
        return self._body

    def undecodable_budget(self) -> int | None:
        """The decode budget the request body went past (a compression bomb), else None."""
        self.request_body()
        return self._over_budget

    def pin_model(self, model: str) -> None:
        """Send the call as ``model`` (a gateway route's), whatever the body names; a body
        with a ``Content-Encoding`` is decoded, pinned and encoded again the same way."""
        pinned = routes.pin_model(self.request_body(), model)
        if pinned is None:
            return
        try:
            self.flow.request.content = pinned  # mitmproxy encodes as Content-Encoding says
        except ValueError:
            return  # an encoding mitmproxy cannot write: the provider cannot read it either
        self._body = pinned
        self._json = _UNPARSED

    def request_json(self) -> Any:
        """The decoded request body parsed as JSON, once (``None`` when it is not JSON)."""
        if self._json is _UNPARSED:
            try:
                self._json = jsoncodec.loads(self.request_body())
            except ValueError:
                self._json = None
        return self._json

    def _stream_member(self) -> Any:
        """The request's top-level ``stream`` value, as the provider parses the body
        (a key spelled with escapes, ``"\\u0073tream"``, included), else ``_ABSENT``."""
        body = self.request_body()
        if b'"stream"' not in body and b"\\u" not in body:
            return _ABSENT  # no other spelling of the key: not worth a parse
        obj = self.request_json()
        return obj.get("stream", _ABSENT) if isinstance(obj, dict) else _ABSENT

    def streaming_requested(self) -> bool:
        if self._streaming is None:
            if self.provider.flavor == "gemini":
                self._streaming = ":streamGenerateContent" in self.billed_path
            elif self.tap is not None and self.tap.reads:  # a resumed background stream
                self._streaming = "stream=true" in self.path.partition("?")[2].lower()
            elif self.billed_path.startswith("/api/") and _OLLAMA_STREAMS.match(self.billed_path):
                self._streaming = self._stream_member() is not False
            else:
                self._streaming = self._stream_member() is True
        return self._streaming

    def start(self) -> None:
        """Create the extractor (and decoder) from the response headers, once."""
        self.started = True
        resp = self.flow.response
        if resp is None:
            return
        headers = self.response_headers
        if not headers:
            headers = self.response_headers = pick_headers(resp.headers)
        content_type = headers.get("content-type", "")
        self.extractor = new_extractor(
            self.provider.flavor,
            path=self.path,
            content_type=content_type,
            streaming_requested="json" in content_type and self.streaming_requested(),
            reader=self.tap.new_reader if self.tap is not None else None,
        )
        self.sse = "event-stream" in headers.get("content-type", "")
        encoding = headers.get("content-encoding", "")
        if encoding:
            try:
                self.decoder = IncrementalDecoder(encoding, bounded.decode_budget(self.sse, 0))
            except ValueError as e:
                self.decode_failed = str(e)

    def consume(self, chunk: bytes) -> None:
        if not self.started:
            self.start()
        if self.decode_failed is not None or self.extractor is None:
            return
        if self.decoder is not None:
            self.raw_bytes += len(chunk)
            self.decoder.max_output = bounded.decode_budget(self.sse, self.raw_bytes)
            try:
                chunk = self.decoder.decode(chunk)
            except OutputLimitExceeded as e:
                self.over_limit(str(e))
                return
            except ValueError as e:
                self.decode_failed = str(e)
                return
        if not self.sse and not isinstance(self.extractor, bounded.OverLimit):
            self.fed_bytes += len(chunk)
            if self.fed_bytes > bounded.MAX_METERED_BODY:
                self.extractor = bounded.OverLimit(
                    self.extractor,
                    f"body over {bounded.MAX_METERED_BODY} bytes",
                    keep_text=False,
                    reread=self._json_extractor,
                )
        self.extractor.feed(chunk)

    def _json_extractor(self) -> UsageExtractor:
        """A fresh extractor for a JSON body of this flow (the end of one too big)."""
        return new_extractor(
            self.provider.flavor,
            path=self.path,
            content_type="application/json",
            reader=self.tap.new_reader if self.tap is not None else None,
        )

    def over_limit(self, reason: str) -> None:
        """Stop reading the body (bounded work); the flow is metered as an estimate."""
        assert self.extractor is not None
        if isinstance(self.extractor, bounded.OverLimit):  # once: every later chunk came
            # here again, and a chain of ~1,000 wrappers overflowed the stack
            self.extractor.give_up(reason)
        else:
            self.extractor = bounded.OverLimit(self.extractor, reason, keep_text=self.sse)
        self.decoder = None

    def drain_decoder(self) -> None:
        if self.decoder is None or self.decode_failed is not None or self.extractor is None:
            return
        try:
            rest = self.decoder.flush()
        except ValueError as e:
            self.decode_failed = str(e)
            return
        if rest:
            self.extractor.feed(rest)

    def rejection(self) -> tuple[str, str]:
        """(why, for the log; message, for the client) when a key policy refuses the call."""
        return rejection(self.keys_presented, self.identity.fingerprint)

    def add_include_usage(self) -> None:
        """Ask an OpenAI stream for its usage chunk (hidden from the client again).

        Whether the call streams is read from the parsed body, decoded first when it has
        a ``Content-Encoding`` (then encoded again the same way, as :meth:`pin_model`)."""
        if not self._chat_stream():
            return
        if not api_version_takes_stream_options(self.path.partition("?")[2]):
            return  # an Azure API version that would refuse the whole call
        new_body = add_include_usage(self.request_body(), parsed=self.request_json())
        if new_body is None:
            return
        req = self.flow.request
        try:
            req.content = new_body  # mitmproxy encodes as Content-Encoding says
        except ValueError:
            return  # an encoding mitmproxy cannot write: the body goes as sent
        self._body = new_body
        self._json = _UNPARSED
        # The stream filter edits the stream the client gets: it needs plain bytes.
        req.headers["accept-encoding"] = "identity"
        self.drop_usage = True

    def _chat_stream(self) -> bool:
        """A streamed Chat Completions (or legacy Completions) call: one whose stream
        reports usage in a chunk of its own, when asked (``stream_options``)."""
        return bool(_INCLUDE_USAGE_PATH.search(self.billed_path)) and self.streaming_requested()

    def usage_stream_filter(self, headers: dict[str, str]) -> UsageStreamFilter | None:
        """The filter that keeps the client from leaving a stream before its usage
        (:mod:`addons.metering.streamfilter`): an OpenAI chat stream with a usage chunk
        (the one the proxy asked for, dropped, or the client's own), a Responses stream,
        an Anthropic one. None for others (Gemini's usage comes with its last content)."""
        if self.drop_usage:
            return UsageStreamFilter(chat_rule(drop_usage=True))
        if "event-stream" not in headers.get("content-type", ""):
            return None
        if self.provider.flavor == "anthropic":
            return UsageStreamFilter(anthropic_rule)
        if self.provider.flavor != "openai":
            return None
        if self.tap is not None:
            return UsageStreamFilter(responses_rule)
        if not self._chat_stream():
            return None
        body = self.request_json()
        options = body.get("stream_options") if isinstance(body, dict) else None
        if isinstance(options, dict) and options.get("include_usage") is True:
            return UsageStreamFilter(chat_rule(drop_usage=False))
        return None

    def ask_plain_stream(self) -> None:
        """An OpenAI or Anthropic stream comes unencoded: the proxy holds its closing
        events until the usage has come (:mod:`addons.metering.streamfilter`) and spools
        the event before it hands on ``data: [DONE]`` (:mod:`addons.metering.replyend`);
        in gzip neither is possible (Anthropic's API gzips a stream when asked to)."""
        req = self.flow.request
        encoding = raw_header(req.headers, b"accept-encoding")
        if encoding not in (None, "identity") and self.streaming_requested():
            req.headers["accept-encoding"] = "identity"


_UNPARSED: Any = object()
"""``FlowMeter._json`` before the request body is parsed."""
_ABSENT: Any = object()
"""No top-level ``stream`` member (or no JSON object to hold one)."""

_WANTED_HEADERS = frozenset(
    n.encode()
    for n in ("content-type", "content-encoding", "content-length", *events.REQUEST_ID_HEADERS)
)
#: A response body of known length up to this size, not a stream, is buffered by mitmproxy.
MAX_BUFFERED_BODY = 1024 * 1024


def buffer_whole(st: FlowMeter, headers: dict[str, str]) -> bool:
    """Whether to let mitmproxy buffer this response body instead of streaming it.

    Buffered: a body of known length (``Content-Length``) up to MAX_BUFFERED_BODY, when
    the client did not ask for a stream and the response is not SSE: what plain mitmdump
    does, and cheaper than mitmproxy's streaming path (~4% requests/s). Streamed: SSE,
    requested streams (Gemini's JSON-array stream included), large bodies, and bodies of
    unknown length (chunked), so whatever the provider sent before a cut still reaches
    the client byte for byte.
    """
    length = headers.get("content-length")
    if (
        length is None
        or not (length.isascii() and length.isdigit())
        or int(length) > MAX_BUFFERED_BODY
    ):
        return False
    return not st.streaming_requested() and "event-stream" not in headers.get("content-type", "")


def pick_headers(headers: http.Headers) -> dict[str, str]:
    """The few response headers metering needs, in one pass (``Headers.get`` is slow)."""
    picked: dict[str, str] = {}
    for name, value in headers.fields:
        lower = name.lower()
        if lower in _WANTED_HEADERS:
            picked.setdefault(lower.decode(), value.decode("utf-8", "surrogateescape"))
    return picked


def raw_header(headers: http.Headers, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case bytes) from a scan of the raw
    fields: for the dozen headers of a request, cheaper than ``Headers.get``."""
    for field, value in headers.fields:
        if field.lower() == name:
            return value.decode("utf-8", "surrogateescape")
    return None


def where(st: FlowMeter) -> str:
    """``provider host/path`` for log lines: never the query string (it may hold a key)."""
    return f"{st.provider.name} {st.flow.request.pretty_host}{st.path.partition('?')[0]}"


def rejection(keys_presented: int, fingerprint: str | None) -> tuple[str, str]:
    """(why, for the log; message, for the client) when the unknown-key policy refuses."""
    if keys_presented > 1:
        return f"{keys_presented} different keys", (
            "Ambiguous API key: the request carries more than one key."
        )
    return f"unknown key ({fingerprint or 'no key'})", "Invalid API key: not known to the proxy."
