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


# A pure function of the key string, and agents send the same few keys over and over:
# hash each distinct key once. Bounded, so a flood of random keys cannot grow the proxy.
_fingerprint = lru_cache(maxsize=1024)(fingerprint)

_RANK = {name: i for i, name in enumerate(KEY_HEADERS)}
_RANK_BYTES = {name.encode(): i for i, name in enumerate(KEY_HEADERS)}


def presented_keys(headers: Mapping[str, str], query: str = "") -> list[str]:
    """Every API key the request carries (usually one), in :data:`KEY_HEADERS` order.

    ``query`` is the raw query string; Gemini accepts ``?key=``. With mitmproxy's
    ``Headers`` the raw fields are scanned once (a ``.get`` per name costs more).
    """
    found: list[tuple[int, str]] = []
    fields = getattr(headers, "fields", None)
    if fields is not None:
        for raw_name, raw_value in fields:
            rank = _RANK_BYTES.get(raw_name.lower())
            if rank is not None:
                found.append((rank, raw_value.decode("utf-8", "surrogateescape")))
    else:
        for name, value in headers.items():
            rank = _RANK.get(name.lower())
            if rank is not None:
                found.append((rank, value))
    keys: list[str] = []
    for rank, value in sorted(found) if len(found) > 1 else found:
        if rank == 0:  # authorization
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() != "bearer":
                continue
            value = token
        value = value.strip()
        if value:
            keys.append(value)
    if "key=" in query:
        keys.extend(v.strip() for k, v in parse_qsl(query) if k == "key" and v.strip())
    return keys


class KeyBook:
    """Fingerprint -> consumer, built once per catalog load."""

    def __init__(self, catalog: Catalog | None) -> None:
        self._by_fp = catalog.consumer_by_fingerprint() if catalog else {}

    def identify_key(self, key: str | None) -> Identity:
        """The consumer of one key (the billed one, see :mod:`addons.metering.attribution`)."""
        if key is None:
            return Identity(None, None)
        fp = _fingerprint(key)
        return Identity(fp, self._by_fp.get(fp))

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


def injection_env_var(consumer: Consumer | None, provider: MeteredProvider) -> str | None:
    if consumer is None:
        return None
    return consumer.inject.get(provider.name)


def inject_key(
    headers: MutableMapping[str, str],
    query: str,
    provider: MeteredProvider,
    env_var: str,
    environ: Mapping[str, str] = os.environ,
) -> str:
    """Replace every presented key by the provider key from ``environ[env_var]``.

    Mutates ``headers``; returns the query string with any ``key=`` removed.
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
    if "key=" in query:
        query = urlencode(
            [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "key"]
        )
    if provider.auth == "bearer":
        headers["authorization"] = f"Bearer {secret}"
    else:
        headers[provider.auth] = secret
    return query
