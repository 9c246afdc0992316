"""Gateway routes: a path on the proxy in reverse mode -> a provider endpoint, model pinned.

Run as a gateway (``mitmdump --mode reverse:https://api.openai.com -s addons/meter.py``),
the proxy is the agents' endpoint. A catalog route such as

    routes:
      - {path: /chat, type: llm/v1/chat, provider: openai, model: gpt-4o}

sends ``POST /chat`` to the provider's chat endpoint (``/v1/chat/completions``; under
the provider's own base path, Groq's ``/openai/v1/chat/completions``:
:mod:`meterline.routecheck`, which the catalog check applies too) and meters it as
``openai`` traffic. The call goes to the provider's own host: the reverse target
when that is the provider's, else the provider's one known host (:class:`Home`); a
provider with no such host (a wildcard, several hosts) is refused there, so a provider
key, injected or the client's, never goes to another server. With ``model`` set,
the request's own ``model`` is overridden, as Kong's AI Proxy does with a pinned model,
so clients may leave it out. Bodies are passed on in the provider's own format (no
translation between APIs).

Routes apply only to flows that arrived on a reverse-mode listener (the caller checks):
a forward proxy's ``https://example.com/chat`` is never rewritten. A request path matches
a route's path as the upstream server would resolve both (:func:`normalise_path`:
``//chat``, ``/ch%61t``, ``/x/../chat`` are ``/chat``), so no other spelling of a route
slips past its pinned model; case is kept, as for provider paths.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from mitmproxy import http
from mitmproxy.net.http import url

from addons.metering import jsoncodec
from addons.metering.providers import (
    MeteredProvider,
    ProviderRegistry,
    canonical_host,
    normalise_path,
)
from meterline import routecheck
from meterline.catalog import Catalog


@dataclass(frozen=True, slots=True)
class Home:
    """A provider's own address, called when the gateway's reverse target is another host:
    the host as the catalog spells it (``::1`` is called on ``::1``, not on ``127.0.0.1``).

    The catalog names hosts, not schemes: a loopback host (a local vLLM, Ollama) is called
    over ``http``, any other over ``https``, so a key never crosses a network in clear
    text (a plain-http server elsewhere fails the TLS handshake and gets nothing).
    """

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, registry: ProviderRegistry, provider: MeteredProvider) -> Home | None:
        """The one address ``provider``'s hosts name; None with a wildcard or several."""
        hosts, wildcard = registry.hosts_of(provider.name)
        if wildcard:
            return None
        homes = {cls._for(host, port) for host, port in hosts}
        return homes.pop() if len(homes) == 1 else None

    @classmethod
    def _for(cls, host: str, port: int | None) -> Home:
        if canonical_host(host) == "127.0.0.1":
            return cls("http", host, port or 80)
        return cls("https", host, port or 443)


@dataclass(frozen=True, slots=True)
class GatewayRoute:
    path: str
    provider: MeteredProvider
    upstream_path: str
    """Path (and query) to call on the provider."""
    model: str | None
    """Pinned model: replaces the request body's ``model`` (Gemini: in the path already)."""
    home: Home | None = None
    """Where to call the provider when the reverse target is not its host."""

    def upstream(self, path: str) -> str:
        """The upstream path for a request to ``path``; the client's query string is kept."""
        query = path.partition("?")[2]
        if not query:
            return self.upstream_path
        return f"{self.upstream_path}{'&' if '?' in self.upstream_path else '?'}{query}"

    @property
    def pins_body_model(self) -> bool:
        return self.model is not None and self.provider.flavor != "gemini"


class RouteTable:
    """Gateway path -> :class:`GatewayRoute`; empty unless the catalog has ``routes``."""

    def __init__(self, routes: Iterable[GatewayRoute] = ()) -> None:
        self._by_path = {_normal(r.path): r for r in routes}

    @classmethod
    def from_catalog(cls, catalog: Catalog | None, registry: ProviderRegistry) -> RouteTable:
        """Resolve each route's provider and the path it calls there
        (:func:`meterline.routecheck.upstream_path`, whose problems the catalog's validation
        reports already); ValueError names the bad route."""
        if catalog is None or not catalog.routes:
            return cls()
        named = {p.name: p for p in registry.providers}
        out = []
        for i, route in enumerate(catalog.routes):
            where = routecheck.where(i, route)
            provider = named.get(route.provider)
            if provider is None:
                known = ", ".join(sorted(named))
                raise ValueError(f"{where}: unknown provider {route.provider!r} (known: {known})")
            try:
                upstream = routecheck.upstream_path(route, provider.flavor)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            home = Home.of(registry, provider)
            out.append(GatewayRoute(route.path, provider, upstream, route.model, home))
        return cls(out)

    def __bool__(self) -> bool:
        return bool(self._by_path)

    def __iter__(self) -> Iterator[GatewayRoute]:
        return iter(self._by_path.values())

    def match(self, path: str) -> GatewayRoute | None:
        """The route for a request path (query string and a trailing ``/`` ignored)."""
        return self._by_path.get(_normal(path))


def _normal(path: str) -> str:
    """``path`` as the upstream resolves it (:func:`normalise_path`), no trailing ``/``."""
    return normalise_path(path).rstrip("/") or "/"


def direct(route: GatewayRoute, request: http.Request, registry: ProviderRegistry) -> str | None:
    """Send ``request`` (routed by ``route``) to the route's provider; the reason it cannot
    be sent (None: it can). The reverse target is kept when it is the provider's host;
    otherwise the request goes to the provider's :class:`Home`, or nowhere without one."""
    target = registry.lookup(request.host, request.port)
    if target is not None and target.name == route.provider.name:
        return None
    home = route.home
    if home is None:
        name = route.provider.name
        return (
            f"Meterline proxy: the gateway route {route.path} calls {name}, which this "
            f"gateway does not forward to ({request.host}:{request.port}) and which has no "
            f"one host to call instead; run the gateway with --mode reverse: to {name}'s host"
        )
    request.scheme = home.scheme
    request.port = home.port
    request.host = home.host  # the Host header (or :authority) follows
    if ":" in home.host and request.host_header is not None:
        # mitmproxy writes an IPv6 host into the header unbracketed (``::1:8000``)
        request.host_header = url.hostport(home.scheme, f"[{home.host}]", home.port)
    return None


def pin_model(body: bytes, model: str) -> bytes | None:
    """The JSON request body with ``model`` set to ``model``; None to leave it as it is.

    None when the body already names that model, or is not a JSON object: such a body
    is passed on unchanged and the provider answers it with its own error, as it would
    without the gateway.
    """
    try:
        data = jsoncodec.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if data.get("model") == model:
        return None
    data["model"] = model
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
