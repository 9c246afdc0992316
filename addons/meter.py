"""Meterline's mitmproxy addon: meter LLM provider traffic, pass everything through.

    mitmdump -s addons/meter.py --set meter_catalog=catalog.yaml --set meter_db=meterline.duckdb

Per flow, in hook order:

- ``requestheaders``: one memoised dict lookup decides whether the host is a provider.
  Anything else (and any provider path that does not bill) is left alone from here on.
- ``request``: attribute the API key to a consumer; reject unknown keys (policy
  ``reject``), inject the provider key (``inject:``), add ``stream_options.include_usage``.
- ``responseheaders``: a small JSON body of known length (no stream asked for, not SSE)
  is left to mitmproxy to buffer, as plain mitmdump does. Anything else gets
  ``flow.response.stream`` set to its :class:`~addons.metering.flowstate.FlowMeter`:
  every chunk goes straight back to mitmproxy (and on to the client); decoding and usage
  extraction are queued (:mod:`~addons.metering.deferred`) and run right after, on the
  same event loop, off the forwarding path. A call whose key the proxy injected has its
  response scrubbed of that key (:mod:`~addons.metering.keyecho`).
- ``response`` / ``error``: queue the finish: usage (a buffered body is decoded and read
  in one pass here; a cut one is estimated; :mod:`~addons.metering.finish`) -> one event
  line in the spool. A background thread moves the spool into DuckDB.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy.layer import NextLayer
from mitmproxy.proxy.layers import HttpLayer
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.proxy.mode_specs import ReverseMode

from addons.metering import (
    attribution,
    catalogwatch,
    deferredopts,
    errors,
    fleetkeys,
    geminilive,
    governance,
    govoptions,
    hints,
    keyecho,
    keys,
    minted,
    noreload,
    options,
    providers,
    realtime,
    redact,
    responsesws,
    routes,
    sideflows,
    unmetered,
    websocket,
)
from addons.metering.deferred import DeferredWork
from addons.metering.dispatch import HookIndex
from addons.metering.finish import Finisher
from addons.metering.flowstate import FlowMeter, buffer_whole, pick_headers, rejection
from addons.metering.gate import RequestGate
from addons.metering.lognoise import MITM_SERVER_LOG, HideStreamingNotice
from addons.metering.ratelog import RateLimitedLog
from addons.metering.replyend import EndWatch
from addons.metering.sink import EventSink
from addons.metering.spool import Spool, SpoolError
from addons.metering.writer import SpoolWriter
from meterline.catalog import Catalog, CatalogError
from meterline.proxycatalog import load_proxy_catalog

log = logging.getLogger("meterline.proxy")


class Meter:
    def __init__(self) -> None:
        self.catalog: Catalog | None = None
        self.registry = providers.ProviderRegistry.from_catalog(None)
        self.minted = minted.MintedKeys()
        self.fleet_keys = fleetkeys.FleetKeys()
        self.minted.share = self.fleet_keys.publish
        self.keybook = keys.KeyBook(None, self.minted)
        self.routes = routes.RouteTable()
        self.sink = EventSink()
        self._active: dict[str, FlowMeter] = {}
        self._refused: dict[str, tuple[str, str, str]] = {}
        """reject mode, a provider path that is not metered: flow id -> (flavor, why,
        message) of a key the policy refuses, answered in ``request``."""
        self._upgrades: dict[str, tuple[providers.MeteredProvider, bool, bool]] = {}
        """Flows upgrading to a metered WebSocket, or minting an ephemeral key (the last
        item False): the key injected and (a socket) the limits checked in ``request``."""
        self._lookups: dict[str, str] = {}
        """Sockets opened with a key nobody here holds: flow id -> its fingerprint, looked
        up among the fleet's minted keys in ``request`` (:mod:`.fleetkeys`)."""
        self.echoes = sideflows.EchoGuard()
        self.deferred = DeferredWork()
        self._running = False
        self._misconfigured = False
        self.flush_interval = 1.0
        self.reject_unknown = False
        self.durable = True
        self.proxy_id: str | None = None
        self._notice_filter = HideStreamingNotice()
        self._redact_filter: redact.RedactingFilter | None = None
        self.hook_index: HookIndex | None = None
        self.rejections = RateLimitedLog(log)  # a stranger's requests: a few lines a minute
        self.unmetered = unmetered.UnmeteredLog(log)
        self.reloader = catalogwatch.Reloader(lambda: self.catalog, self._reload)
        self.governance = governance.Governance()
        self.finisher = Finisher(self.governance, self._record)
        self.sockets = websocket.SocketMeter(self.governance, self._record)
        self.gate = RequestGate(self.governance, self.rejections, self._record)

    # ------------------------------------------------------------------ options

    def load(self, loader: Any) -> None:
        MITM_SERVER_LOG.addFilter(self._notice_filter)
        self._redact_filter = redact.install_log_filter()  # keys in mitmproxy's own log
        options.add_options(loader)
        govoptions.add_options(loader)
        for problem in deferredopts.refused(loader.master.options):
            log.error("meterline: %s", problem)  # then mitmproxy exits (errorcheck)
            self._misconfigured = True

    def configure(self, updated: set[str]) -> None:
        try:
            self._configure(updated)
        except exceptions.OptionsError as e:
            if self._running or ctx.master.addons.get("errorcheck") is None:
                raise  # a change on a running proxy is refused, and the UI says why
            # At start mitmdump would print the script's traceback for a user's mistake:
            # one line instead; mitmproxy exits on an error logged during start-up.
            log.error("meterline: %s", e)
            self._misconfigured = True

    def _configure(self, updated: set[str]) -> None:
        if "meter_catalog" in updated or self.catalog is None:
            path = Path(ctx.options.meter_catalog)
            stamp = catalogwatch.file_stamp(path)
            try:
                self._use_catalog(load_proxy_catalog(path))
            except (CatalogError, ValueError) as e:
                raise exceptions.OptionsError(f"meter_catalog: {e}") from e
            self.reloader.watch = catalogwatch.CatalogWatch(path, stamp)
        options.check_policies(ctx.options)
        if "meter_flush_interval" in updated:
            self.flush_interval = options.parse_interval(ctx.options.meter_flush_interval)
        if "meter_db" in updated:
            options.check_db(ctx.options.meter_db)
        if "meter_spool" in updated:
            options.check_spool(ctx.options.meter_spool)
        if self._streams_requests() and self._checks_before_sending(self.catalog):
            raise exceptions.OptionsError(options.STREAMED_REQUESTS)
        # Read per flow: plain attributes, not ctx.options (which type-checks and copies).
        self.reject_unknown = ctx.options.meter_unknown_keys == "reject"
        self.gate.include_usage = ctx.options.meter_include_usage
        self.finisher.log_payloads = ctx.options.meter_log_payloads
        self.finisher.abandoned_at_bound = ctx.options.meter_abandoned_output == "bound"
        self.durable = ctx.options.meter_durable
        self.proxy_id = ctx.options.meter_proxy_id or None
        self.gate.durable = self.durable
        self.finisher.proxy_id = self.sockets.proxy_id = self.gate.proxy_id = self.proxy_id
        o = ctx.options
        self.governance.configure(
            o.meter_governance_refresh,
            o.meter_governance_failure,
            o.meter_db,
            self.proxy_id,
            o.meter_governance_share,
        )
        self.fleet_keys.configure(o.meter_db)
        if self._running and "meter_spool" in updated:
            self._open_spool()
        if self.writer is not None:
            self.writer.locator = ctx.options.meter_db
            self.writer.interval = self.flush_interval
        if self._running and "meter_fast_dispatch" in updated:
            self._index_hooks(ctx.options.meter_fast_dispatch)

    def _index_hooks(self, on: bool) -> None:
        """Put mitmproxy's hook index (:mod:`.dispatch`) on the running master, or take it off."""
        if self.hook_index is not None:
            self.hook_index.uninstall()
            self.hook_index = None
        if not on:
            return
        index = HookIndex(ctx.master.addons)
        if index.install():
            self.hook_index = index
        else:
            log.info("meterline: another addon replaced mitmproxy's hook dispatch: left as is")

    @staticmethod
    def _streams_requests() -> bool:
        return bool(getattr(ctx.options, "stream_large_bodies", None))

    @staticmethod
    def _checks_before_sending(catalog: Catalog | None) -> bool:
        """Whether, with ``catalog``, a metered request must wait for its ``request``
        hook to be sent: now, or once a subscription or override it lists begins."""
        consumers = catalog.consumers if catalog else []
        return (
            ctx.options.meter_unknown_keys == "reject"
            or any(c.inject for c in consumers)
            or governance.may_govern(catalog)
        )

    def _use_catalog(self, catalog: Catalog) -> None:
        """Swap in a validated catalog (flows already under way keep theirs)."""
        registry = providers.ProviderRegistry.from_catalog(catalog)
        table = routes.RouteTable.from_catalog(catalog, registry)
        keybook = keys.KeyBook(catalog, self.minted)
        self.catalog, self.registry, self.keybook = catalog, registry, keybook
        self.governance.use_catalog(catalog)
        self.routes = table

    def _reload(self, path: Path, catalog: Catalog) -> None:
        if self._streams_requests() and self._checks_before_sending(catalog):
            # Checked at start only, a reload adding a limit or a key injection let large
            # requests through unchecked: billed as refused, served, never injected.
            log.error(
                "meterline: catalog %s not reloaded, keeping the one in use: %s",
                path,
                options.STREAMED_REQUESTS,
            )
            return
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

    @property
    def spool(self) -> Spool | None:
        return self.sink.spool

    @property
    def writer(self) -> SpoolWriter | None:
        return self.sink.writer

    def _spooled_events(self) -> list[dict[str, Any]]:
        """The events of the spool's sealed segments (an earlier run's, at start: the
        writer may be storing them meanwhile; one it stored and deleted is skipped)."""
        if self.spool is None:
            return []
        found: list[dict[str, Any]] = []
        for segment in self.spool.sealed():
            try:
                found.extend(Spool.read(segment))
            except FileNotFoundError:
                continue
        return found

    def _open_spool(self) -> None:
        """(Re)open the spool named by the options and start its writer (replaying leftovers)."""
        directory = Path(ctx.options.meter_spool).resolve()
        try:
            self.sink.open(
                directory, ctx.options.meter_db, self.flush_interval, proxy_id=self.proxy_id
            )
        except SpoolError as e:
            raise exceptions.OptionsError(f"meter_spool: {e}") from e
        if self.spool is not None:  # minted keys outlive a restart, beside the spool
            self.minted.attach(self.spool.directory / minted.LOG_NAME)

    def running(self) -> None:
        """The proxy is up: open the spool (not before, so loading the addon writes nothing)."""
        if self._misconfigured:
            ctx.master.shutdown()  # mitmproxy exits too; nothing may pass unmetered meanwhile
            return
        self._running = True
        try:
            self._open_spool()
        except exceptions.OptionsError as e:  # e.g. a second proxy on the same spool
            log.error("meterline: %s; each proxy needs its own: --set meter_spool=DIR", e)
            ctx.master.shutdown()  # not a traceback, and no proxy running unmetered
            return
        if self.writer is not None:
            self.governance.start(
                self.spool.directory if self.spool else None,
                self.writer.read,
                self._spooled_events,
            )
        if noreload.stop_watching(ctx.master, self):
            log.info("meterline: %s is not reloaded when it changes: restart to upgrade", __file__)
        self._index_hooks(ctx.options.meter_fast_dispatch)
        if not redact.install(ctx.master.addons.get("dumper")):
            log.debug("meterline: no dumper addon: nothing to redact")
        self.reloader.start()
        spool = self.spool.directory if self.spool else "?"
        hints.log_startup(self.registry, self.catalog, self.routes, ctx.options.meter_db, spool)

    def done(self) -> None:
        """Finish every queued and in-flight flow, then drain the spool into the store."""
        self._index_hooks(False)
        self.reloader.stop()
        self.rejections.flush("rejections")
        self.governance.stop()
        self.deferred.run_all()
        for flow_id in list(self._active):
            self.finisher.finish(self._active.pop(flow_id), cut=True)
        self.sockets.stop()
        self.sink.close()
        self.minted.close()
        self.fleet_keys.stop()
        MITM_SERVER_LOG.removeFilter(self._notice_filter)
        if self._redact_filter is not None:
            redact.remove_log_filter(self._redact_filter)

    def next_layer(self, nextlayer: NextLayer) -> None:
        """A connection to a provider is read as HTTP, whatever its first bytes look like.

        mitmproxy guesses raw TCP (``rawtcp``, on by default) for a connection whose first
        bytes do not look like a request line: a client whose first write is one or two
        bytes, or starts with a blank line (which HTTP servers skip), had its calls pass
        through a tunnel as opaque bytes, neither metered nor key-checked, in ``reject``
        mode too. This hook runs before mitmproxy's own choice (scripts come first): for a
        provider's address it makes the choice mitmproxy makes for anything that is not
        TLS, a known ALPN or raw TCP, and leaves the rest (TLS, a server that speaks
        first, reverse mode, and everything while ``ignore_hosts``, ``allow_hosts`` or
        ``tcp_hosts`` is set) to it.
        """
        context = nextlayer.context
        address = context.server.address
        if nextlayer.layer is not None or address is None:
            return
        if context.client.transport_protocol != "tcp" or context.client.alpn:
            return  # an ALPN (after TLS): mitmproxy's choice is HTTP for HTTP's own
        if isinstance(context.client.proxy_mode, ReverseMode) or nextlayer.data_server():
            return
        data = nextlayer.data_client()
        if not data or starts_like_tls_record(data):
            return
        host, port = address[0], address[1]
        if self.registry.lookup(host, port) is None and (
            providers.lookup_named(self.registry, host, port, None, context.client.sni) is None
        ):
            return
        options = ctx.options
        if options.ignore_hosts or options.allow_hosts or options.tcp_hosts:
            return  # the operator routes connections by hand: mitmproxy applies the rules
        nextlayer.layer = HttpLayer(context, HTTPMode.transparent)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        route = None
        if self.routes and isinstance(flow.client_conn.proxy_mode, ReverseMode):
            route = self.routes.match(req.path)  # a gateway path such as /chat
        misrouted = None
        if route is not None and req.method == "POST":
            req.path = route.upstream(req.path)
            provider: providers.MeteredProvider | None = route.provider
            misrouted = routes.direct(route, req, self.registry)  # to the provider's host
        else:
            route, provider = None, self.registry.lookup(req.host, req.port)
        by_name = False
        if provider is None:
            provider = providers.lookup_named(
                self.registry, req.host, req.port, req.host_header, flow.client_conn.sni
            )
            if provider is None:
                return
            by_name = True  # the connection goes elsewhere: metered, never given a key
        path = req.path
        spoken = providers.billed_flavor(provider.flavor, path, req.method)
        if spoken is None:  # not metered as a call (a model list, a file upload, images...)
            self.unmetered.note(provider, req.method, path)
            if self.reject_unknown:
                self._check_unmetered(flow, provider)
            if (
                req.method == "GET"
                and "websocket" in req.headers.get("upgrade", "").lower()
                and websocket.is_metered_socket(provider.flavor, path)
            ):
                if self.fleet_keys.enabled:
                    fp = sideflows.stranger_key(flow, provider, self.keybook)
                    if fp is not None:
                        self._lookups[flow.id] = fp  # minted through another proxy?
                if flow.id not in self._refused:
                    self._upgrades[flow.id] = (provider, by_name, True)  # see `request`
            elif minted.is_mint(provider.flavor, req.method, path) and sideflows.note_mint(
                flow, provider, self.keybook, self.minted
            ):
                self._upgrades[flow.id] = (provider, by_name, False)  # to inject: `request`
            return
        if spoken != provider.flavor:  # another API's compatible endpoint
            provider = providers.speaking(provider, spoken)
        query = path.partition("?")[2] if "?" in path else ""
        keyset = attribution.presented(req.headers, query, provider)
        identity = self.keybook.identify_key(keyset.billed)
        st = FlowMeter(self, flow, provider, identity)
        st.keys_presented = keyset.distinct
        st.reject = self.reject_unknown and (identity.consumer is None or keyset.ambiguous)
        st.inject_env = keys.injection_env_var(identity, provider)
        st.inject_refused = by_name and st.inject_env is not None
        st.misrouted = misrouted
        if route is not None and route.pins_body_model:
            st.pinned_model = route.model
        self._active[flow.id] = st

    def _check_unmetered(self, flow: http.HTTPFlow, provider: providers.MeteredProvider) -> None:
        """The unknown-key policy covers every call to a provider, not only the metered
        ones: the provider serves (and bills) a model list, an image or a Realtime session
        to whoever holds a key, so ``reject`` must not forward a stranger's there either."""
        query = flow.request.path.partition("?")[2]
        keyset = attribution.presented(flow.request.headers, query, provider)
        identity = self.keybook.identify_key(keyset.billed)
        if identity.consumer is None or keyset.ambiguous:
            why, message = rejection(keyset.distinct, identity.fingerprint)
            where_ = f"{provider.name} {flow.request.pretty_host} (a path not metered): {why}"
            self._refused[flow.id] = (provider.flavor, where_, message)

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        if self._lookups and flow.id in self._lookups:
            return self._request_after_key_lookup(flow, self._lookups.pop(flow.id))
        st = self._active.get(flow.id)
        consumer = st.identity.consumer if st is not None else None
        if consumer is not None and self.governance.awaits_first_read(consumer.name):
            # At start, until the store is first read (or the failure policy takes
            # over): the event loop stays free, other calls go on.
            return self._request_after_first_read(flow)
        if st is None and self._upgrades and flow.id in self._upgrades:
            provider, by_name, socket = self._upgrades.pop(flow.id)
            if socket:
                return self._check_upgrade(flow, provider, by_name)
            sideflows.inject(flow, provider, by_name, self.keybook)  # a key mint
            self.echoes.note(flow, provider)
            return None
        self._decide(flow, st)
        return None

    def _decide(self, flow: http.HTTPFlow, st: FlowMeter | None) -> None:
        """The ``request`` hook's work (``st``: the flow's metering state, looked up once
        by the hook): refuse, check the limits, inject a key."""
        if st is None:
            if self._refused and flow.id in self._refused:
                flavor, why, message = self._refused.pop(flow.id)
                self.rejections.warning("meterline: %s: rejected %s", flow.id, why)
                errors.respond(flow, flavor, "unknown_key", message)
            return
        if not self.gate.admit(st):
            del self._active[flow.id]

    def _check_upgrade(
        self, flow: http.HTTPFlow, provider: providers.MeteredProvider, by_name: bool
    ) -> Coroutine[Any, Any, None] | None:
        """A metered WebSocket session about to open: its consumer's provider key
        injected as on a call, and its limits checked
        (:meth:`~addons.metering.websocket.SocketMeter.opening`)."""
        identity = sideflows.inject(flow, provider, by_name, self.keybook)
        if identity is None:
            return None
        self.echoes.note(flow, provider)
        return self.sockets.opening(flow, provider, identity, self.rejections)

    async def _request_after_key_lookup(self, flow: http.HTTPFlow, key_fp: str) -> None:
        """A socket opened with a key another proxy of the fleet minted is its minter's,
        as if minted here: the request is taken anew with the key known."""
        found = await self.fleet_keys.lookup(key_fp)
        if flow.error is not None:
            return  # the client left while it waited (``error`` forgot the flow)
        if found is not None:
            self.minted.add(found.key_fp, found.owner_fp, found.expires, time.time())
            self._refused.pop(flow.id, None)
            self._upgrades.pop(flow.id, None)
            self.requestheaders(flow)
            self._lookups.pop(flow.id, None)
        pending = self.request(flow)
        if pending is not None:
            await pending

    async def _request_after_first_read(self, flow: http.HTTPFlow) -> None:
        await self.governance.first_read()
        self._decide(flow, self._active.get(flow.id))  # gone if the client left meanwhile

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        st = self._active.get(flow.id)
        if st is None:
            if self.echoes:  # a mint or an upgrade given the provider's key
                self.echoes.scrub_headers(flow)
            return
        resp = flow.response
        assert resp is not None
        headers = st.response_headers = pick_headers(resp.headers)
        key = st.injected_key
        if key is not None:
            keyecho.scrub_headers(resp, key)
        if buffer_whole(st, headers):
            return  # mitmproxy buffers it, as plain mitmdump does; metered in `response`
        if key is not None and resp.status_code >= 400 and "content-encoding" in headers:
            # Encoded though the proxy asked for plain bytes: an error body is small,
            # buffered and scrubbed decoded in `response`.
            return
        if resp.status_code < 400 and "content-encoding" not in headers:
            st.stream_filter = st.usage_stream_filter(headers)
            if st.drop_usage and st.stream_filter and "content-length" in headers:
                _unsized(flow)  # the client gets fewer bytes than announced
        if self.durable:
            sse = "event-stream" in headers.get("content-type", "")
            st.end = EndWatch(
                headers.get("content-length"),
                stream_of=st.provider.flavor if sse else None,
                encoding=headers.get("content-encoding", ""),
            )
        resp.stream = st if key is None else keyecho.ScrubbingStream(st, key)
        self._notice_filter.add(flow.request.host)

    def response(self, flow: http.HTTPFlow) -> None:
        st = self._active.pop(flow.id, None)
        if st is None:
            if self.echoes:
                self.echoes.scrub_body(flow)
            if self.minted.minting:
                self.minted.answered(flow)
            return
        st.t_done = time.time()
        resp = flow.response
        body = resp.raw_content if st.t_first_byte is None and resp is not None else None
        if body and resp is not None:
            # Buffered (a small JSON body), or another addon answered: read it whole, once.
            st.t_first_byte = min(resp.timestamp_start or st.t_done, st.t_done)
            if st.injected_key is not None:  # metered as sent; the client's copy scrubbed
                keyecho.scrub_body(resp, st.injected_key)
        if not self.durable:
            if body:
                self.deferred.defer_after_reply(self.finisher.finish_whole, st, body)
            else:
                self.deferred.defer(self.finisher.finish, st, False)
            return
        # Durable: the event is in the spool before mitmproxy sends the buffered body, or
        # the end of a streamed one, to the client (bounded work, see metering.bounded).
        if body:  # this flow's queued chunks first
            self.deferred.now(self.finisher.finish_whole, st, body)
        else:
            self.deferred.now(self.finisher.finish, st, False)

    def finish_early(self, st: FlowMeter, chunk: bytes) -> None:
        """``chunk`` completes the client's answer (:mod:`addons.metering.replyend`):
        meter the flow and spool its event before the chunk is handed on."""
        st.end = None
        self._active.pop(st.flow.id, None)  # `response` and `error` find nothing more to do
        st.t_done = time.time()
        work = self.deferred
        work.drain()
        work.pending.append((st.consume, (chunk,)))
        work.pending.append((self.finisher.finish, (st, False)))
        work.drain()

    def error(self, flow: http.HTTPFlow) -> None:
        if self._refused:
            self._refused.pop(flow.id, None)  # the client left before its request was whole
        if self._upgrades:
            self._upgrades.pop(flow.id, None)
        if self._lookups:
            self._lookups.pop(flow.id, None)
        if self.minted.minting:
            self.minted.forget(flow)
        if self.echoes:
            self.echoes.forget(flow)
        st = self._active.pop(flow.id, None)
        if st is not None:
            st.t_done = time.time()
            self.deferred.defer(self.finisher.finish, st, True)

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        """A Responses API WebSocket (``GET /v1/responses``), a Realtime session
        (``GET /v1/realtime``) and a Gemini Live session (``BidiGenerateContent``) are
        metered per response (:mod:`addons.metering.websocket`); other WebSockets pass
        unmetered."""
        if self.echoes:
            self.echoes.forget(flow)  # upgraded: no error body to scrub
        req = flow.request
        provider = self.registry.lookup(req.host, req.port) or providers.lookup_named(
            self.registry, req.host, req.port, req.host_header, flow.client_conn.sni
        )
        if provider is None:
            return
        session: realtime.RealtimeSession | None = None
        live: geminilive.LiveSession | None = None
        if realtime.is_realtime_socket(provider.flavor, req.path):
            session = realtime.RealtimeSession.from_path(req.path)
        elif geminilive.is_live_socket(provider.flavor, req.path):
            live = geminilive.LiveSession()
        elif not responsesws.is_responses_socket(provider.flavor, req.path):
            return
        identity = sideflows.socket_identity(flow, provider, self.keybook)
        self.sockets.start(flow, provider, identity, session, live)

    def websocket_message(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        return self.sockets.message(flow)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self.sockets.end(flow)

    def _record(self, event: dict[str, Any]) -> None:
        if self.sink.writer is None:
            self._open_spool()
        self.sink.record(event)


def _unsized(flow: http.HTTPFlow) -> None:
    """Send a response whose body the proxy shortens without a length: chunked to an
    HTTP/1.1 client, ended by closing the connection for HTTP/1.0, framed by its stream's
    end on HTTP/2 and 3 (mitmproxy has read the upstream's length before this hook)."""
    resp = flow.response
    assert resp is not None
    del resp.headers["content-length"]
    if flow.request.http_version == "HTTP/1.1":  # HTTP/1.0 knows no chunks: ends at close
        resp.headers["transfer-encoding"] = "chunked"


addons = [Meter()]
