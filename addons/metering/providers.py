"""Which hosts are LLM providers, which API flavor they speak, and which paths bill
(those: :mod:`meterline.billedpaths`, which the catalog's route check reads too).

The proxy sees every request of every agent; almost all of it is not LLM traffic.
:meth:`ProviderRegistry.lookup` is therefore memoised per ``(host, port)``: after the
first request to a host, recognising (or dismissing) it is one dict lookup.

Host patterns: ``api.example.com`` (any port), ``api.example.com:8443`` (that port only)
or ``*.example.com`` (any subdomain, any depth, not the bare domain). An IPv6 address is
``[fd00::5]:8000`` (that port), ``[fd00::5]`` or bare ``fd00::5`` (any port: with two or
more colons the text is an address, never ``address:port``).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from meterline.billedpaths import billed_flavor as billed_flavor  # re-exported
from meterline.billedpaths import is_billed_path as is_billed_path  # re-exported
from meterline.catalog import Catalog, Flavor
from meterline.providers import BUILTIN_PROVIDERS as BUILTIN_TABLE
from meterline.providers import DEFAULT_AUTH, AuthStyle, includes_usage
from meterline.urlpaths import normalise_path as normalise_path  # re-exported


@dataclass(frozen=True, slots=True)
class MeteredProvider:
    """A provider the proxy meters, as its registry holds it (the catalog entry is
    :class:`meterline.catalog.Provider`, the built-in spec
    :class:`meterline.providers.BuiltinProvider`)."""

    name: str
    flavor: Flavor
    auth: AuthStyle
    """The header that carries the provider's own key (used by key injection)."""
    keep_request: bool = False
    """Its requests are never rewritten (no ``stream_options`` added): Gemini's
    OpenAI-compatible endpoints (:func:`speaking`), whose streams report usage unasked,
    Mistral, which refuses the member, and a catalog provider with ``include_usage:
    false`` (:func:`meterline.providers.includes_usage`)."""


# The built-in providers are one table in meterline/ (the catalog checks names against it).
BUILTIN_PROVIDERS: tuple[tuple[MeteredProvider, tuple[str, ...]], ...] = tuple(
    (
        MeteredProvider(
            p.name, p.flavor, p.auth or DEFAULT_AUTH[p.flavor], keep_request=not p.include_usage
        ),
        p.hosts,
    )
    for p in BUILTIN_TABLE
)

_MEMO_LIMIT = 4096


def parse_host_pattern(pattern: str) -> tuple[str, int | None, bool]:
    """``host[:port]``, ``*.suffix[:port]``, ``[ipv6][:port]`` or a bare IPv6 address ->
    (host or suffix, port, is_wildcard); an IPv6 host is returned without brackets.

    Raises ValueError on an empty host, a non-numeric port or a malformed IPv6 address.
    """
    text = pattern.strip().lower()
    if text.startswith("["):
        host, port_text = _bracketed(pattern, text)
    elif text.count(":") >= 2:
        host, port_text = _ipv6_address(pattern, text), ""
    else:
        host, _, port_text = text.partition(":")
    port: int | None = None
    if port_text:
        if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
            raise ValueError(f"{pattern!r}: port must be a number from 1 to 65535")
        port = int(port_text)
    wildcard = host.startswith("*.")
    if wildcard:
        host = host[2:]
    if not host or "*" in host or "/" in host:
        raise ValueError(f"{pattern!r}: expected host, host:port, [ipv6]:port or *.domain")
    return host, port, wildcard


def _bracketed(pattern: str, text: str) -> tuple[str, str]:
    """``[address]`` or ``[address]:port`` -> (address, port text, empty for any port)."""
    inside, sep, rest = text[1:].partition("]")
    if not sep or (rest and not rest.startswith(":")):
        raise ValueError(f"{pattern!r}: expected [ipv6] or [ipv6]:port")
    return _ipv6_address(pattern, inside), rest[1:] if rest else ""


def _ipv6_address(pattern: str, text: str) -> str:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        raise ValueError(
            f"{pattern!r}: not an IPv6 address; write [address] or [address]:port"
        ) from None
    return text


class ProviderRegistry:
    """Maps ``(host, port)`` to a :class:`MeteredProvider`; catalog entries win over built-ins."""

    def __init__(self, entries: Iterable[tuple[MeteredProvider, Iterable[str]]]) -> None:
        self._exact: dict[tuple[str, int | None], MeteredProvider] = {}
        self._suffix: dict[tuple[str, int | None], MeteredProvider] = {}
        self._memo: dict[tuple[str, int], MeteredProvider | None] = {}
        self._spelt: dict[tuple[str, int | None], str] = {}
        """Each exact entry's host as its pattern spells it (``::1``, not the canonical
        ``127.0.0.1``): the address to connect to, where the canonical form only matches."""
        for provider, patterns in entries:
            for pattern in patterns:
                host, port, wildcard = parse_host_pattern(pattern)
                if wildcard:
                    self._suffix.setdefault((host, port), provider)
                    continue
                key = (canonical_host(host), port)
                self._exact.setdefault(key, provider)
                self._spelt.setdefault(key, host)

    @classmethod
    def from_catalog(cls, catalog: Catalog | None) -> ProviderRegistry:
        extra = [
            (
                MeteredProvider(
                    p.name,
                    p.flavor,
                    p.auth or DEFAULT_AUTH[p.flavor],
                    keep_request=not includes_usage(p.name, p.flavor, p.include_usage),
                ),
                p.hosts,
            )
            for p in (catalog.providers if catalog else [])
        ]
        return cls([*extra, *BUILTIN_PROVIDERS])

    def lookup(self, host: str, port: int) -> MeteredProvider | None:
        """The provider serving ``host:port``, or None. One dict lookup once memoised."""
        key = (host, port)
        try:
            return self._memo[key]
        except KeyError:
            pass
        found = self._resolve(canonical_host(host), port)
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[key] = found
        return found

    def _resolve(self, host: str, port: int) -> MeteredProvider | None:
        exact = self._exact.get((host, port)) or self._exact.get((host, None))
        if exact is not None or not self._suffix:
            return exact
        parent = host
        while "." in parent:
            parent = parent.split(".", 1)[1]
            found = self._suffix.get((parent, port)) or self._suffix.get((parent, None))
            if found is not None:
                return found
        return None

    def hosts_of(self, name: str) -> tuple[list[tuple[str, int | None]], bool]:
        """The exact ``(host, port)`` entries that lead to the provider called ``name``
        (port None: any), hosts as the catalog spells them, and whether a wildcard pattern
        leads to it as well."""
        exact = [(self._spelt[key], key[1]) for key, p in self._exact.items() if p.name == name]
        return exact, any(p.name == name for p in self._suffix.values())

    @property
    def providers(self) -> list[MeteredProvider]:
        seen: dict[str, MeteredProvider] = {}
        for p in [*self._exact.values(), *self._suffix.values()]:
            seen.setdefault(p.name, p)
        return list(seen.values())


_SPEAKING: dict[tuple[MeteredProvider, Flavor], MeteredProvider] = {}


def speaking(provider: MeteredProvider, flavor: Flavor) -> MeteredProvider:
    """``provider`` as metered on an endpoint of another API format; one object per pair.
    Its key is read and injected as that format's (``Authorization: Bearer``), except on
    Anthropic's own servers, which read ``x-api-key`` first on every endpoint."""
    if flavor == provider.flavor:
        return provider
    key = (provider, flavor)
    found = _SPEAKING.get(key)
    if found is None:
        anthropic = provider.flavor == "anthropic"
        found = _SPEAKING[key] = MeteredProvider(
            provider.name,
            flavor,
            # Anthropic's own servers read its x-api-key first, on this endpoint too
            provider.auth if anthropic else DEFAULT_AUTH[flavor],
            # Anthropic documents stream_options as supported on its OpenAI endpoint
            keep_request=not anthropic,
        )
    return found


#: Other spellings of IPv4 addresses that resolvers accept: ``127.1``, ``0x7f.1``, ``2130706433``.
_LEGACY_IPV4 = re.compile(r"[0-9][0-9a-fx.]*")
_LOOPBACK = "127.0.0.1"


#: "This host": a connection to 0.0.0.0 or :: (however written: ``0``, ``0.0``, ``[::]``)
#: reaches the loopback address.
_THIS_HOST = frozenset({"0.0.0.0", "::"})


def canonical_host(host: str) -> str:
    """One spelling per address: lower case, no trailing dot, IP literals canonical
    (``127.1``, ``[::ffff:127.0.0.1]`` -> ``127.0.0.1``); ``localhost`` (and
    ``*.localhost``), every ``127.x.x.x``, ``::1`` and ``0.0.0.0`` / ``::`` ->
    ``127.0.0.1``, the loopback address they reach."""
    canonical = _canonical_host(host)
    return _LOOPBACK if canonical in _THIS_HOST else canonical


def _canonical_host(host: str) -> str:
    h = host.lower().rstrip(".")
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if h == "localhost" or h.endswith(".localhost"):
        return _LOOPBACK
    if ":" in h:
        try:
            ip6 = ipaddress.IPv6Address(h)
        except ValueError:
            return h
        if ip6.ipv4_mapped is not None:
            return _loopback_v4(str(ip6.ipv4_mapped))
        return _LOOPBACK if ip6.is_loopback else str(ip6)
    if _LEGACY_IPV4.fullmatch(h):
        try:
            return _loopback_v4(socket.inet_ntoa(socket.inet_aton(h)))
        except OSError:
            return h
    return h


def _loopback_v4(ip: str) -> str:
    """Every address of 127.0.0.0/8 is this host's loopback: a server listening on all
    interfaces answers on ``127.0.0.2`` as on ``127.0.0.1``, so they are one host."""
    return _LOOPBACK if ip.startswith("127.") else ip


def lookup_named(
    registry: ProviderRegistry, dest: str, port: int, host_header: str | None, sni: str | None
) -> MeteredProvider | None:
    """The provider a request names, when its destination ``dest`` is not one: the ``Host``
    header, then the TLS SNI. A CONNECT to an IP literal of a provider (the SNI and Host
    still name it) is metered as that provider. Each lookup is memoised; a name equal to
    ``dest`` (the usual case: not a provider) is not looked up again."""
    if host_header:
        name, _, port_text = host_header.rpartition(":")
        if not name or "]" in port_text or not port_text.isdigit():
            name = host_header
        if name != dest:
            provider = registry.lookup(name, port)
            if provider is not None:
                return provider
    if sni and sni != dest:
        return registry.lookup(sni, port)
    return None
