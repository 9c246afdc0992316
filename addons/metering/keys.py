"""Find the API key a request presents, attribute it to a consumer, inject provider keys.

The raw key lives only in the request headers while the hook runs: what leaves this
module is its fingerprint (``sha256:<hex>``), never the key itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal
from urllib.parse import parse_qsl, urlencode

from addons.metering.minted import MintedKeys
from addons.metering.providers import MeteredProvider
from meterline.catalog import Catalog, Consumer
from meterline.fingerprint import fingerprint

KEY_HEADERS: tuple[str, ...] = ("authorization", "x-api-key", "api-key", "x-goog-api-key", "apikey")
"""Headers that may carry a key, in the order they are tried. ``apikey``: Kong key-auth."""

UnknownKeyPolicy = Literal["record", "reject"]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who sent a request: ``consumer`` is None when the key is not in the catalog."""

    fingerprint: str | None
    consumer: Consumer | None
    minted: bool = False
    """The key is an ephemeral one the consumer minted through the proxy
    (:mod:`addons.metering.minted`): the provider's own credential, never replaced."""


# A pure function of the key string, and agents send the same few keys over and over:
# hash each distinct key once. Bounded, so a flood of random keys cannot grow the proxy.
_fingerprint = lru_cache(maxsize=1024)(fingerprint)


class KeyBook:
    """Fingerprint -> consumer, built once per catalog load; ``minted``: the ephemeral
    keys consumers minted through the proxy (kept across catalog loads)."""

    def __init__(self, catalog: Catalog | None, minted: MintedKeys | None = None) -> None:
        self._by_fp = catalog.consumer_by_fingerprint() if catalog else {}
        self._minted = minted if minted is not None else MintedKeys()

    def identify_key(self, key: str | None) -> Identity:
        """The consumer of one key (the billed one, see :mod:`addons.metering.attribution`)."""
        if key is None:
            return Identity(None, None)
        fp = _fingerprint(key)
        consumer = self._by_fp.get(fp)
        if consumer is None and self._minted:
            return self._minted_identity(fp)
        return Identity(fp, consumer)

    def identify_fingerprint(self, fp: str | None) -> Identity:
        """The consumer of a key known by its fingerprint only (the key is gone: a
        WebSocket upgrade whose key the proxy replaced by the provider's)."""
        if fp is None:
            return Identity(None, None)
        consumer = self._by_fp.get(fp)
        if consumer is None and self._minted:
            return self._minted_identity(fp)
        return Identity(fp, consumer)

    def _minted_identity(self, fp: str) -> Identity:
        """A key that is not the catalog's may be one a consumer minted: its consumer is
        the minting key's, while that key is still in the catalog."""
        owner = self._minted.owner(fp)
        consumer = self._by_fp.get(owner) if owner is not None else None
        return Identity(fp, consumer, minted=consumer is not None)

    def identify(self, keys: list[str]) -> Identity:
        """The first presented key that belongs to a consumer wins; else the first key."""
        fps = [_fingerprint(k) for k in keys]
        for fp in fps:
            consumer = self._by_fp.get(fp)
            if consumer is not None:
                return Identity(fp, consumer)
        return Identity(fps[0] if fps else None, None)


class InjectionError(RuntimeError):
    """The consumer's provider key cannot be injected; the message says why (no secrets)."""


def injection_env_var(identity: Identity, provider: MeteredProvider) -> str | None:
    """The variable holding the provider key to put in place of the consumer's, if any
    (never in place of a key the consumer minted: the provider issued it)."""
    consumer = identity.consumer
    if consumer is None or identity.minted:
        return None
    return consumer.inject.get(provider.name)


#: Query parameters that carry a key a provider reads (Gemini's ``?key=``, Google's OAuth
#: ``?access_token=``): attributed (:mod:`addons.metering.attribution`), stripped by
#: injection, redacted in logs.
QUERY_KEY_PARAMS: tuple[str, ...] = ("key", "access_token")
WS_PROTOCOL = "sec-websocket-protocol"
"""OpenAI Realtime in a browser: the key as the subprotocol ``openai-insecure-api-key.<key>``
of the WebSocket handshake (a browser cannot set ``Authorization``)."""
WS_KEY_PREFIX = "openai-insecure-api-key."


def inject_key(
    headers: MutableMapping[str, str],
    query: str,
    provider: MeteredProvider,
    env_var: str,
    environ: Mapping[str, str] = os.environ,
) -> str:
    """Replace every presented key by the provider key from ``environ[env_var]``.

    Mutates ``headers``; returns the query string with any ``key=`` and
    ``access_token=`` removed.
    Raises :class:`InjectionError` when the variable is unset or empty.
    """
    secret = environ.get(env_var, "").strip()
    if not secret:
        raise InjectionError(
            f"key injection for provider {provider.name!r}: environment variable "
            f"{env_var} is not set on the proxy"
        )
    for name in KEY_HEADERS:
        if name in headers:
            del headers[name]
    if WS_PROTOCOL in headers:  # a WebSocket upgrade: the other subprotocols stay
        offered = [p.strip() for p in headers[WS_PROTOCOL].split(",")]
        kept = [p for p in offered if p[: len(WS_KEY_PREFIX)].lower() != WS_KEY_PREFIX]
        if not kept:
            del headers[WS_PROTOCOL]
        elif len(kept) < len(offered):
            headers[WS_PROTOCOL] = ", ".join(kept)
    if "key=" in query or "token=" in query or "%" in query:  # every key the URL carries
        query = urlencode(
            [
                (k, v)
                for k, v in parse_qsl(query, keep_blank_values=True)
                if k not in QUERY_KEY_PARAMS
            ]
        )
    if provider.auth == "bearer":
        headers["authorization"] = f"Bearer {secret}"
    else:
        headers[provider.auth] = secret
    return query


def injected_key(headers: Mapping[str, str], provider: MeteredProvider) -> str:
    """The provider key :func:`inject_key` put in ``headers``, as it is sent."""
    if provider.auth == "bearer":
        return headers["authorization"].removeprefix("Bearer ")
    return headers[provider.auth]
