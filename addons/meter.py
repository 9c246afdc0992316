"""Meterline's mitmproxy addon: meter LLM provider traffic, pass everything through.

    mitmdump -s addons/meter.py --set meter_catalog=catalog.yaml --set meter_db=meterline.duckdb

Per flow, in hook order:

- ``requestheaders``: one memoised dict lookup decides whether the host is a provider.
  Anything else (and any provider path that does not bill) is left alone from here on.
- ``request``: attribute the API key to a consumer; reject unknown keys (policy
  ``reject``), inject the provider key (``inject:``), add ``stream_options.include_usage``.
- ``responseheaders``: a small JSON body of known length (no stream asked for, not SSE)
  is left to mitmproxy to buffer, as plain mitmdump does. Anything else gets
  ``flow.response.stream`` set to a :class:`_MeteredStream`: every chunk goes straight
  back to mitmproxy (and on to the client); decoding and usage extraction are queued and
  run right after, on the same event loop, off the forwarding path.
- ``response`` / ``error``: queue the finish: usage (a buffered body is decoded and read
  in one pass here; a cut one is estimated) -> one event line in the spool. A background
  thread moves the spool into DuckDB.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy.mode_specs import ReverseMode

from addons.metering import (
    attribution,
    bounded,
    catalogwatch,
    errors,
    events,
    governance,
    hints,
    keys,
    providers,
    redact,
    routes,
)
from addons.metering.bounded import count_tokens, estimate_request_input
from addons.metering.decoding import IncrementalDecoder, OutputLimitExceeded
from addons.metering.extract import new_extractor
from addons.metering.replyend import EndWatch
from addons.metering.settle import OnceLog, Settled, settle
from addons.metering.spool import Spool, SpoolError
from addons.metering.streamopts import UsageChunkDropper, add_include_usage
from addons.metering.usage import UsageExtractor
from addons.metering.writer import SpoolWriter
from meterline.catalog import Catalog, CatalogError
from meterline.proxycatalog import load_proxy_catalog
from meterline.store import DEFAULT_CATALOG, DEFAULT_DB

log = logging.getLogger("meterline.proxy")
#: mitmproxy's connection handler logs here, among others "Streaming response from <host>."
_MITM_SERVER_LOG = logging.getLogger("mitmproxy.proxy.server")
_STREAMING_NOTICE = "Streaming response from "

# Cheap test for a top-level ``"stream": true`` without parsing the request JSON.
_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')
UNKNOWN_KEY_POLICIES = ("record", "reject")
_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')
_INCLUDE_USAGE_PATH = re.compile(r"/(?:chat/)?completions/?$")


class _MeteredStream:
    """State of one metered flow; mitmproxy calls it with each response body chunk.

    Only what must happen before bytes move is done in the hooks (provider lookup, key
    policy, request rewrite); the extractor and decoder are created on the first queued
    chunk, and everything about the event (host, status, ids, estimate) is read in
    :meth:`Meter._finish`, after the client has its bytes.
    """

    __slots__ = (
        "meter",
        "flow",
        "provider",
        "identity",
        "reject",
        "inject_env",
        "pinned_model",
        "drop_usage",
        "dropper",
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
        "end",
        "_body",
        "_streaming",
    )

    def __init__(
        self,
        meter: Meter,
        flow: http.HTTPFlow,
        provider: providers.Provider,
        identity: keys.Identity,
    ) -> None:
        self.meter = meter
        self.flow = flow
        self.provider = provider
        self.identity = identity
        self.reject = False
        self.inject_env: str | None = None
        self.pinned_model: str | None = None
        self.drop_usage = False
        self.dropper: UsageChunkDropper | None = None
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
        self.end: EndWatch | None = None
        self._body: bytes | None = None
        self._streaming: bool | None = None

    def __call__(self, chunk: bytes) -> bytes | list[bytes]:
        """The hot path: return the chunk at once; queue the metering work."""
        if chunk:
            if self.t_first_byte is None:
                self.t_first_byte = time.time()
            if self.end is not None and self.end.completes(chunk):
                self.meter._finish_early(self, chunk)
            else:
                self.meter._defer(self.consume, chunk)
            if self.dropper is None:
                return chunk
            out = self.dropper.feed(chunk)
        elif self.dropper is None:
            return chunk
        else:
            out = self.dropper.flush()
        # An empty chunk would end an HTTP/1.1 chunked body early: send nothing instead.
        return out if out else []

    # -- off the forwarding path ------------------------------------------------------

    @property
    def path(self) -> str:
        return self.flow.request.path

    def request_body(self) -> bytes:
        """The request body, decoded with bounded output (a request may be a bomb too)."""
        if self._body is None:
            req = self.flow.request
            raw = req.raw_content or b""
            encoding = req.headers.get("content-encoding", "")
            self._body = raw
            if encoding and raw:
                try:
                    decoder = IncrementalDecoder(encoding, max_output=bounded.MAX_METERED_BODY)
                    self._body = decoder.decode(raw) + decoder.flush()
                except OutputLimitExceeded:
                    self._body = b""
                except ValueError:  # unknown or corrupt content-encoding: as sent
                    pass
        return self._body

    def streaming_requested(self) -> bool:
        if self._streaming is None:
            if self.provider.flavor == "gemini":
                self._streaming = ":streamGenerateContent" in self.billed_path
            else:
                self._streaming = _STREAM_TRUE.search(self.request_body()) is not None
        return self._streaming

    def start(self) -> None:
        """Create the extractor (and decoder) from the response headers, once."""
        self.started = True
        resp = self.flow.response
        if resp is None:
            return
        headers = self.response_headers
        if not headers:
            headers = self.response_headers = _pick_headers(resp.headers)
        self.extractor = new_extractor(
            self.provider.flavor,
            path=self.path,
            content_type=headers.get("content-type", ""),
            streaming_requested=self.streaming_requested(),
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
        if not self.sse:
            self.fed_bytes += len(chunk)
            if self.fed_bytes > bounded.MAX_METERED_BODY:
                self.over_limit(f"body over {bounded.MAX_METERED_BODY} bytes: not read further")
                return
        self.extractor.feed(chunk)

    def over_limit(self, reason: str) -> None:
        """Stop reading the body (bounded work); the flow is metered as an estimate."""
        assert self.extractor is not None
        self.extractor = bounded.OverLimit(
            self.extractor, f"{reason}; usage estimated", keep_text=self.sse
        )
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


class _HideStreamingNotice(logging.Filter):
    """Drops mitmproxy's info line "Streaming response from <host>." for metered hosts.

    The addon streams SSE, requested streams and large or chunked bodies, so mitmproxy
    would print that line once per such API call, where plain mitmdump (which buffers)
    prints nothing. Formatting and printing it cost about as much as all of the metering;
    it says nothing the user asked for. Other hosts (streamed by other addons) keep it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.hosts: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        return not (
            type(msg) is str
            and msg.startswith(_STREAMING_NOTICE)
            and msg[len(_STREAMING_NOTICE) : -1] in self.hosts
        )

    def add(self, host: str) -> None:
        if host not in self.hosts:
            if len(self.hosts) >= 1024:
                self.hosts.clear()
            self.hosts.add(host)


class Meter:
    def __init__(self) -> None:
        self.catalog: Catalog | None = None
        self.registry = providers.ProviderRegistry.from_catalog(None)
        self.keybook = keys.KeyBook(None)
        self.routes = routes.RouteTable()
        self.spool: Spool | None = None
        self.writer: SpoolWriter | None = None
        self._active: dict[str, _MeteredStream] = {}
        self._pending: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._after_reply: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._drain_scheduled = False
        self._running = False
        self.flush_interval = 1.0
        self.reject_unknown = False
        self.include_usage = True
        self.log_payloads = False
        self.durable = True
        self.proxy_id: str | None = None
        self._notice_filter = _HideStreamingNotice()
        self._once = OnceLog()
        self._catalog_watch: catalogwatch.CatalogWatch | None = None
        self._catalog_timer: asyncio.TimerHandle | None = None
        self.governance = governance.Governance()

    # ------------------------------------------------------------------ options

    def load(self, loader: Any) -> None:
        _MITM_SERVER_LOG.addFilter(self._notice_filter)
        loader.add_option(
            "meter_db",
            str,
            os.environ.get("METERLINE_DB", DEFAULT_DB),
            "Usage event store: a DuckDB file, or a 'ducklake:...' locator "
            "(default: $METERLINE_DB or meterline.duckdb).",
        )
        loader.add_option(
            "meter_catalog",
            str,
            os.environ.get("METERLINE_CATALOG", DEFAULT_CATALOG),
            "Catalog YAML with providers and consumers (default: $METERLINE_CATALOG "
            "or catalog.yaml). Edits to the file are picked up within a second; an edit "
            "that does not validate is logged and the catalog in use is kept.",
        )
        loader.add_option(
            "meter_spool",
            str,
            "meterline-spool",
            "Directory of the local event spool (one per proxy); leftovers are replayed "
            "into the store on start.",
        )
        loader.add_option(
            "meter_unknown_keys",
            str,
            "record",
            "What to do with a request whose API key is not in the catalog: 'record' "
            "(forward, meter with no consumer) or 'reject' (answer 401, never forwarded).",
            choices=UNKNOWN_KEY_POLICIES,
        )
        loader.add_option(
            "meter_include_usage",
            bool,
            True,
            "Add stream_options.include_usage to OpenAI streaming requests that lack it "
            "(and hide the extra usage chunk from the client).",
        )
        loader.add_option(
            "meter_flush_interval",
            str,  # mitmproxy cannot parse float options from --set
            "1.0",
            "Seconds between writes of spooled events to the store (e.g. 1.0).",
        )
        loader.add_option(
            "meter_log_payloads",
            bool,
            False,
            "Include request/response excerpts in warnings about unreadable bodies.",
        )
        loader.add_option(
            "meter_durable",
            bool,
            True,
            "Spool each API call's event before the end of its response reaches the client, "
            "so a crash never loses an answered call. False: meter right after the reply "
            "(a little less latency; a kill -9 can lose the last calls' events).",
        )
        loader.add_option(
            "meter_proxy_id",
            str,
            socket.gethostname(),
            "Name of this proxy, stored with each event (default: the host name).",
        )
        governance.add_options(loader)

    def configure(self, updated: set[str]) -> None:
        if "meter_catalog" in updated or self.catalog is None:
            path = Path(ctx.options.meter_catalog)
            stamp = catalogwatch.file_stamp(path)
            try:
                self._use_catalog(load_proxy_catalog(path))
            except (CatalogError, ValueError) as e:
                raise exceptions.OptionsError(f"meter_catalog: {e}") from None
            self._catalog_watch = catalogwatch.CatalogWatch(path, stamp)
        if ctx.options.meter_unknown_keys not in UNKNOWN_KEY_POLICIES:
            raise exceptions.OptionsError(
                f"meter_unknown_keys: expected one of {', '.join(UNKNOWN_KEY_POLICIES)}, "
                f"got {ctx.options.meter_unknown_keys!r}"
            )
        if "meter_flush_interval" in updated:
            self.flush_interval = _parse_interval(ctx.options.meter_flush_interval)
        # Read per flow: plain attributes, not ctx.options (which type-checks and copies).
        self.reject_unknown = ctx.options.meter_unknown_keys == "reject"
        self.include_usage = ctx.options.meter_include_usage
        self.log_payloads = ctx.options.meter_log_payloads
        self.durable = ctx.options.meter_durable
        self.proxy_id = ctx.options.meter_proxy_id or None
        o = ctx.options
        self.governance.configure(
            o.meter_governance_refresh, o.meter_governance_failure, o.meter_db
        )
        if self._running and "meter_spool" in updated:
            self._open_spool()
        if self.writer is not None:
            self.writer.locator = ctx.options.meter_db
            self.writer.interval = self.flush_interval

    def _use_catalog(self, catalog: Catalog) -> None:
        """Swap in a validated catalog (flows already under way keep theirs)."""
        registry = providers.ProviderRegistry.from_catalog(catalog)
        table = routes.RouteTable.from_catalog(catalog, registry)
        self.catalog, self.registry, self.keybook = catalog, registry, keys.KeyBook(catalog)
        self.governance.use_catalog(catalog)
        self.routes = table

    def _watch_catalog(self) -> None:
        """Re-read the catalog when its file changed; runs every catalogwatch.CHECK_INTERVAL.

        One ``stat`` per interval on the event loop, never per flow. A change is read once
        the file is stable (:mod:`addons.metering.catalogwatch`); an edit that does not
        validate, or would drop every consumer or provider, is logged once and the
        catalog in use is kept.
        """
        try:
            watch = self._catalog_watch
            poll = watch.poll() if watch is not None else catalogwatch.Poll.UNCHANGED
            path = watch.path if watch is not None else None
            if poll is catalogwatch.Poll.GONE:
                log.error("meterline: catalog %s is gone, keeping the one in use", path)
            elif poll is catalogwatch.Poll.READY and watch is not None:
                catalog: Catalog | None = None
                try:
                    catalog = load_proxy_catalog(watch.path)
                except (CatalogError, ValueError) as e:
                    why: str | None = str(e)
                if not watch.settled():
                    return  # written to while being read: read it again once it is stable
                if catalog is not None:
                    why = catalogwatch.refusal(self.catalog, catalog)
                if catalog is None or why:
                    log.error(
                        "meterline: catalog %s not reloaded, keeping the one in use: %s",
                        path,
                        why,
                    )
                else:
                    self._reload(watch.path, catalog)
        finally:
            self._schedule_catalog_watch()

    def _reload(self, path: Path, catalog: Catalog) -> None:
        try:
            self._use_catalog(catalog)
        except ValueError as e:  # a route the registry cannot serve
            log.error("meterline: catalog %s not reloaded, keeping the one in use: %s", path, e)
            return
        log.info(
            "meterline: catalog %s reloaded: %d provider(s), %d consumer(s)",
            path,
            len(self.registry.providers),
            len(self.catalog.consumers) if self.catalog else 0,
        )

    def _schedule_catalog_watch(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (hooks driven directly): nothing to watch with
            return
        self._catalog_timer = loop.call_later(catalogwatch.CHECK_INTERVAL, self._watch_catalog)

    def _open_spool(self) -> None:
        """(Re)open the spool named by the options and start its writer (replaying leftovers)."""
        directory = Path(ctx.options.meter_spool).resolve()
        if self.spool is not None and self.spool.directory.resolve() == directory:
            return
        try:
            spool = Spool(directory)
        except SpoolError as e:
            raise exceptions.OptionsError(f"meter_spool: {e}") from None
        self._close_writer()
        self.spool = spool
        self.writer = SpoolWriter(spool, ctx.options.meter_db, interval=self.flush_interval)
        self.writer.start()

    def running(self) -> None:
        """The proxy is up: open the spool (not before, so loading the addon writes nothing)."""
        self._running = True
        try:
            self._open_spool()
        except exceptions.OptionsError as e:  # e.g. a second proxy on the same spool
            log.error("meterline: %s; each proxy needs its own: --set meter_spool=DIR", e)
            ctx.master.shutdown()  # not a traceback, and no proxy running unmetered
            return
        if self.writer is not None:
            self.governance.start(self.writer.flush, self.spool.directory if self.spool else None)
        if not redact.install(ctx.master.addons.get("dumper")):
            log.debug("meterline: no dumper addon: nothing to redact")
        if self._catalog_timer is None:
            self._schedule_catalog_watch()
        log.info(
            "meterline: metering %d provider(s), %d consumer(s); events -> %s via spool %s",
            len(self.registry.providers),
            len(self.catalog.consumers) if self.catalog else 0,
            ctx.options.meter_db,
            self.spool.directory if self.spool else "?",
        )
        for route in self.routes:
            log.info(
                "meterline: gateway route POST %s -> %s %s%s",
                route.path,
                route.provider.name,
                route.upstream_path,
                f" (model pinned to {route.model})" if route.model else "",
            )
        plain_http = hints.plain_http_warning(self.catalog)
        if plain_http:
            log.warning(plain_http)

    def done(self) -> None:
        """Finish every queued and in-flight flow, then drain the spool into the store."""
        if self._catalog_timer is not None:
            self._catalog_timer.cancel()
            self._catalog_timer = None
        self.governance.stop()
        self._pending.extend(self._after_reply)
        self._after_reply.clear()
        self._drain()
        for flow_id in list(self._active):
            self._finish(self._active.pop(flow_id), cut=True)
        self._close_writer()
        _MITM_SERVER_LOG.removeFilter(self._notice_filter)

    def _close_writer(self) -> None:
        if self.writer is not None and not self.writer.stop():
            log.warning("meterline: events left in spool %s for the next start", self.spool)
        if self.spool is not None:
            self.spool.close()
        self.writer, self.spool = None, None

    # ------------------------------------------------------------------ deferral

    def _defer(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` after the current event-loop step (in order), or now if no loop."""
        self._pending.append((fn, args))
        if self._drain_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._drain()
            return
        self._drain_scheduled = True
        loop.call_soon(self._drain)

    def _defer_after_reply(self, fn: Callable[..., None], *args: Any) -> None:
        """Like :meth:`_defer`, a few event-loop steps later: after the reply has gone out.

        mitmproxy sends a buffered body some loop steps after the ``response`` hook
        returns; metering it on the next step would hold the client's bytes back by the
        cost of the metering (measured: ~0.1 ms of the JSON median). Items wait in
        ``_after_reply`` (FIFO), so ``done`` still finishes every one of them.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._defer(fn, *args)
            return
        self._after_reply.append((fn, args))
        loop.call_soon(loop.call_soon, loop.call_soon, self._release_after_reply)

    def _release_after_reply(self) -> None:
        if self._after_reply:
            fn, args = self._after_reply.popleft()
            self._defer(fn, *args)

    def _drain(self) -> None:
        self._drain_scheduled = False
        pending = self._pending
        while pending:
            fn, args = pending.popleft()
            try:
                fn(*args)
            except Exception:  # metering must never take the proxy down
                log.exception("meterline: metering failed (traffic unaffected)")

    # ------------------------------------------------------------------ hooks

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        route = None
        if self.routes and isinstance(flow.client_conn.proxy_mode, ReverseMode):
            route = self.routes.match(req.path)  # a gateway path such as /chat
        if route is not None and req.method == "POST":
            req.path = route.upstream(req.path)
            provider: providers.Provider | None = route.provider
        else:
            route, provider = None, self.registry.lookup(req.host, req.port)
        if provider is None:
            provider = providers.lookup_named(
                self.registry, req.port, req.host_header, flow.client_conn.sni
            )
            if provider is None:
                return
        path = req.path
        if req.method != "POST" or not providers.is_billed_path(provider.flavor, path):
            return
        query = path.partition("?")[2] if "?" in path else ""
        keyset = attribution.presented(req.headers, query, provider)
        identity = self.keybook.identify_key(keyset.billed)
        st = _MeteredStream(self, flow, provider, identity)
        st.keys_presented = keyset.distinct
        st.reject = self.reject_unknown and (identity.consumer is None or keyset.ambiguous)
        st.inject_env = keys.injection_env_var(identity.consumer, provider)
        if route is not None and route.pins_body_model:
            st.pinned_model = route.model
        self._active[flow.id] = st

    def request(self, flow: http.HTTPFlow) -> None:
        st = self._active.get(flow.id)
        if st is None:
            return
        if st.reject:
            del self._active[flow.id]
            if st.keys_presented > 1:
                why = f"{st.keys_presented} different keys"
                message = "Ambiguous API key: the request carries more than one key."
            else:
                why = f"unknown key ({st.identity.fingerprint or 'no key'})"
                message = "Invalid API key: not known to the proxy."
            log.warning("meterline: %s: rejected %s: %s", flow.id, _where(st), why)
            self._error_response(flow, st, "unknown_key", message)
            return
        consumer = st.identity.consumer
        verdict = self.governance.check(
            consumer.name if consumer else None, st.provider.flavor, st.provider.name, flow
        )
        if verdict is not None and verdict is not True:  # refused: never forwarded
            del self._active[flow.id]
            who = (consumer.name if consumer else None, st.identity.fingerprint)
            provider = (st.provider.name, st.provider.flavor)
            self._record(self.governance.refuse(flow, provider, who, verdict, self.proxy_id))
            return
        req = flow.request
        if st.inject_env is not None:
            path, _, query = req.path.partition("?")
            try:
                query = keys.inject_key(req.headers, query, st.provider, st.inject_env)
            except keys.InjectionError as e:
                del self._active[flow.id]
                self.governance.finish(flow.id, None)
                log.error("meterline: %s: %s", flow.id, e)
                self._error_response(flow, st, "injection_failed", f"Meterline proxy: {e}")
                return
            req.path = f"{path}?{query}" if query else path
        if st.pinned_model is not None and "content-encoding" not in req.headers:
            pinned = routes.pin_model(req.raw_content or b"", st.pinned_model)
            if pinned is not None:
                req.content = pinned
        if self.include_usage and st.provider.flavor == "openai":
            self._add_include_usage(st)
        st.t_request = time.time()

    def _add_include_usage(self, st: _MeteredStream) -> None:
        req = st.flow.request
        body = req.raw_content
        if not body or b'"stream"' not in body or "content-encoding" in req.headers:
            return
        if not _INCLUDE_USAGE_PATH.search(st.billed_path):
            return
        new_body = add_include_usage(body)
        if new_body is not None:
            req.content = new_body
            # The dropper edits the stream the client gets: it needs plain bytes.
            req.headers["accept-encoding"] = "identity"
            st.drop_usage = True

    def _error_response(
        self, flow: http.HTTPFlow, st: _MeteredStream, kind: errors.ErrorKind, message: str
    ) -> None:
        status, body = errors.error_body(st.provider.flavor, kind, message)
        flow.response = http.Response.make(
            status, body, {"content-type": "application/json", "x-meterline": kind}
        )

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        st = self._active.get(flow.id)
        if st is None:
            return
        resp = flow.response
        assert resp is not None
        headers = st.response_headers = _pick_headers(resp.headers)
        if _buffer_whole(st, headers):
            return  # mitmproxy buffers it, as plain mitmdump does; metered in `response`
        if st.drop_usage and resp.status_code < 400 and "content-encoding" not in headers:
            st.dropper = UsageChunkDropper()
        if self.durable:
            st.end = EndWatch(
                headers.get("content-length"),
                done_event=st.provider.flavor == "openai"
                and "event-stream" in headers.get("content-type", ""),
            )
        resp.stream = st
        self._notice_filter.add(flow.request.host)

    def response(self, flow: http.HTTPFlow) -> None:
        st = self._active.pop(flow.id, None)
        if st is None:
            return
        st.t_done = time.time()
        resp = flow.response
        body = resp.raw_content if st.t_first_byte is None and resp is not None else None
        if body and resp is not None:
            # Buffered (a small JSON body), or another addon answered: read it whole, once.
            st.t_first_byte = min(resp.timestamp_start or st.t_done, st.t_done)
        if not self.durable:
            if body:
                self._defer_after_reply(self._finish_whole, st, body)
            else:
                self._defer(self._finish, st, False)
            return
        # Durable: the event is in the spool before mitmproxy sends the buffered body, or
        # the end of a streamed one, to the client (bounded work, see metering.bounded).
        self._drain()  # this flow's queued chunks first
        if body:
            self._pending.append((self._finish_whole, (st, body)))
        else:
            self._pending.append((self._finish, (st, False)))
        self._drain()

    def _finish_early(self, st: _MeteredStream, chunk: bytes) -> None:
        """``chunk`` completes the client's answer (:mod:`addons.metering.replyend`):
        meter the flow and spool its event before the chunk is handed on."""
        st.end = None
        self._active.pop(st.flow.id, None)  # `response` and `error` find nothing more to do
        st.t_done = time.time()
        self._drain()
        self._pending.append((st.consume, (chunk,)))
        self._pending.append((self._finish, (st, False)))
        self._drain()

    def error(self, flow: http.HTTPFlow) -> None:
        st = self._active.pop(flow.id, None)
        if st is not None:
            st.t_done = time.time()
            self._defer(self._finish, st, True)

    # ------------------------------------------------------------------ finishing

    def _finish_whole(self, st: _MeteredStream, body: bytes) -> None:
        """Meter a body that arrived in one piece (decoded and parsed in one pass)."""
        st.consume(body)
        self._finish(st, False)

    def _finish(self, st: _MeteredStream, cut: bool) -> None:
        flow = st.flow
        resp = flow.response
        if resp is None:  # no response headers ever came: the provider did no work
            log.info("meterline: %s: no response from %s, nothing metered", flow.id, _where(st))
            self.governance.finish(flow.id, None)
            return
        if not st.started:
            st.start()
        assert st.extractor is not None
        st.drain_decoder()
        usage = st.extractor.finish()
        problems = list(st.extractor.problems)
        if st.decode_failed:
            problems.insert(0, f"cannot decode body: {st.decode_failed}")
        settled = settle(
            st.provider.flavor,
            usage,
            st.extractor.seen(),
            status_code=resp.status_code,
            cut=cut,
            request_model=lambda: _request_model(st),
            estimate_input=lambda model: estimate_request_input(
                st.provider.flavor, st.request_body(), model=model
            ),
            count_output=lambda model: _count_output(st, model),
        )
        usage, status = settled.usage, settled.status
        self._note_settled(flow.id, st, settled, cut)
        if problems and resp.status_code < 400 and not settled.invalid:
            self._warn_problems(flow.id, st, problems)
        elif problems:
            log.debug("meterline: %s: %s answered %s: %s", flow.id, _where(st), status, problems)
        consumer = st.identity.consumer
        exchange = events.Exchange(
            provider=st.provider.name,
            flavor=st.provider.flavor,
            method=flow.request.method,
            host=flow.request.pretty_host,
            path=flow.request.path,
            consumer=consumer.name if consumer else None,
            key_fingerprint=st.identity.fingerprint,
            status=status,
            streamed=st.streaming_requested()
            or "event-stream" in st.response_headers.get("content-type", ""),
            request_id=events.request_id_from(st.response_headers),
            t_request=st.t_request,
            t_first_byte=st.t_first_byte,
            t_done=st.t_done,
        )
        rows = events.build_events(exchange, usage, self.proxy_id)
        self.governance.finish(flow.id, rows)
        for event in rows:
            self._record(event)

    def _note_settled(self, flow_id: str, st: _MeteredStream, settled: Settled, cut: bool) -> None:
        """Say why a call is not metered from the provider's final report, if it is not.

        Unusable counts are logged once per provider and kind of problem (a provider
        that always sends them would otherwise flood the log).
        """
        if settled.invalid and self._once.first(st.provider.name, settled.invalid):
            log.warning(
                "meterline: %s: %s reported unusable usage (%s): estimated and flagged; "
                "further reports like it are not logged",
                flow_id,
                _where(st),
                settled.invalid,
            )
        if cut and settled.status is None:
            log.warning(
                "meterline: %s: response from %s cut short (client or provider went away); "
                "usage estimated where not reported",
                flow_id,
                _where(st),
            )
        elif cut:
            log.debug("meterline: %s: connection ended after the final usage report", flow_id)
        elif settled.why_estimated:
            log.debug("meterline: %s: %s: %s", flow_id, _where(st), settled.why_estimated)

    def _record(self, event: dict[str, Any]) -> None:
        if self.spool is None or self.writer is None:
            self._open_spool()
        assert self.spool is not None and self.writer is not None
        self.writer.notify(self.spool.append(event))

    def _warn_problems(self, flow_id: str, st: _MeteredStream, problems: list[str]) -> None:
        if self.log_payloads:
            excerpt = st.request_body()[:500].decode("utf-8", "replace")
            log.warning(
                "meterline: %s: unreadable response from %s: %s (request: %s)",
                flow_id,
                _where(st),
                "; ".join(problems),
                excerpt,
            )
        else:
            log.warning(
                "meterline: %s: unreadable response from %s: %d problem(s), first: %s",
                flow_id,
                _where(st),
                len(problems),
                problems[0][:200],
            )


_WANTED_HEADERS = frozenset(
    n.encode()
    for n in ("content-type", "content-encoding", "content-length", *events.REQUEST_ID_HEADERS)
)
#: A response body of known length up to this size, not a stream, is buffered by mitmproxy.
MAX_BUFFERED_BODY = 1024 * 1024


def _buffer_whole(st: _MeteredStream, headers: dict[str, str]) -> bool:
    """Whether to let mitmproxy buffer this response body instead of streaming it.

    Buffered: a body of known length (``Content-Length``) up to MAX_BUFFERED_BODY, when
    the client did not ask for a stream and the response is not SSE: what plain mitmdump
    does, and cheaper than mitmproxy's streaming path (~4% requests/s). Streamed: SSE,
    requested streams (Gemini's JSON-array stream included), large bodies, and bodies of
    unknown length (chunked), so whatever the provider sent before a cut still reaches
    the client byte for byte.
    """
    length = headers.get("content-length")
    if length is None or not length.isdigit() or int(length) > MAX_BUFFERED_BODY:
        return False
    return not st.streaming_requested() and "event-stream" not in headers.get("content-type", "")


def _pick_headers(headers: http.Headers) -> dict[str, str]:
    """The few response headers metering needs, in one pass (``Headers.get`` is slow)."""
    picked: dict[str, str] = {}
    for name, value in headers.fields:
        lower = name.lower()
        if lower in _WANTED_HEADERS:
            picked.setdefault(lower.decode(), value.decode("utf-8", "surrogateescape"))
    return picked


def _where(st: _MeteredStream) -> str:
    """``provider host/path`` for log lines: never the query string (it may hold a key)."""
    return f"{st.provider.name} {st.flow.request.pretty_host}{st.path.partition('?')[0]}"


def _parse_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise exceptions.OptionsError(
            f"meter_flush_interval: expected seconds greater than 0, got {text!r}"
        )
    return value


def _count_output(st: _MeteredStream, model: str | None) -> int:
    """Tokens of the output text seen (tiktoken), for an estimate."""
    text = st.extractor.output_text() if st.extractor else ""
    return count_tokens(text, model or "") if text else 0


def _request_model(st: _MeteredStream) -> str | None:
    if st.provider.flavor == "gemini":
        m = re.search(r"/models/([^/:]+):", st.path)
        return m.group(1) if m else None
    body = st.request_body()
    if len(body) > bounded.MAX_PARSED_REQUEST:  # bounded work: no parse of a huge body
        found = _MODEL_FIELD.search(body, 0, bounded.MAX_PARSED_REQUEST)
        return found.group(1).decode("utf-8", "replace") if found else None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) else None


addons = [Meter()]
