"""Which key pays for a call: the one the provider will authenticate, by its own rules.

A request may carry several keys (an SDK default plus a header an agent adds, a key in
the URL and one in a header). Billing "the first key found in the catalog" would let a
caller present a stranger's known key next to their own: the provider authenticates
theirs, the stranger pays. So the billed key is the one in the first place the flavor's
provider reads:

========================  ===============================================================
flavor (auth)             places read, in order
========================  ===============================================================
openai                    ``Authorization: Bearer``, then a Realtime handshake's
                          ``openai-insecure-api-key.<key>`` subprotocol
openai (``api-key``)      ``api-key``, then ``Authorization: Bearer`` (Azure), then the
                          subprotocol
anthropic                 ``x-api-key``, then ``Authorization: Bearer``
gemini                    ``x-goog-api-key``, ``?key=``, then ``Authorization: Bearer``
                          (an OAuth token) or ``?access_token=`` (the same, in the URL)
any (gateway key)         ``apikey`` (Kong key-auth: for the proxy, when nothing above is
                          present; consumers with key injection present their key there)
========================  ===============================================================

A place given twice with different keys (two ``Authorization`` headers) bills no one:
which one the provider reads is not defined. A request that carries more than one
distinct key anywhere (places above and every other key header) is *ambiguous*: with
``meter_unknown_keys=reject`` the proxy refuses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

from addons.metering.keys import KEY_HEADERS, QUERY_KEY_PARAMS, WS_KEY_PREFIX, WS_PROTOCOL
from addons.metering.providers import MeteredProvider

_QUERY_PLACES = {name: "?" + name for name in QUERY_KEY_PARAMS}
QUERY_KEY = _QUERY_PLACES["key"]
QUERY_TOKEN = _QUERY_PLACES["access_token"]
"""Google's OAuth token in the URL: what ``Authorization: Bearer`` carries, as a parameter."""
GATEWAY_HEADER = "apikey"


@dataclass(frozen=True, slots=True)
class Presented:
    """The keys of one request: ``billed`` is the provider's (None: none, or undefined)."""

    billed: str | None
    distinct: int
    """How many different keys the request carries, in any key header or ``?key=``."""

    @property
    def ambiguous(self) -> bool:
        return self.distinct > 1


_NO_KEY = Presented(None, 0)


def places(provider: MeteredProvider) -> tuple[str, ...]:
    """The key places ``provider`` reads, in the order it reads them."""
    if provider.flavor == "anthropic":
        return ("x-api-key", "authorization")
    if provider.flavor == "gemini":
        return ("x-goog-api-key", QUERY_KEY, "authorization", QUERY_TOKEN)
    if provider.auth != "bearer":
        return (provider.auth, "authorization", WS_PROTOCOL)
    return ("authorization", WS_PROTOCOL)


_KEY_HEADER_BYTES = {name.encode(): name for name in (*KEY_HEADERS, WS_PROTOCOL)}


def _ws_keys(value: str) -> list[str]:
    """The keys among a handshake's subprotocols (``realtime, openai-insecure-api-key.K``):
    every one, so that two in one line are ambiguous as two lines are."""
    keys = []
    for protocol in value.split(","):
        protocol = protocol.strip()
        if protocol[: len(WS_KEY_PREFIX)].lower() == WS_KEY_PREFIX:
            keys.append(protocol[len(WS_KEY_PREFIX) :])
    return keys


def _values(headers: Mapping[str, str], query: str) -> dict[str, list[str]]:
    """Every key value by place (header name, or ``?key``); empty values left out."""
    found: dict[str, list[str]] = {}
    fields = getattr(headers, "fields", None)
    if fields is not None:  # mitmproxy's raw fields: only key headers are decoded
        key_by_bytes = _KEY_HEADER_BYTES
        pairs = [
            (key_by_bytes[raw.lower()], value.decode("utf-8", "surrogateescape"))
            for raw, value in fields
            if raw.lower() in key_by_bytes
        ]
    else:
        pairs = [
            (n.lower(), v)
            for n, v in headers.items()
            if n.lower() in KEY_HEADERS or n.lower() == WS_PROTOCOL
        ]
    for name, value in pairs:
        if not value.isprintable():  # a folded line, a tab: whitespace as servers read it
            value = " ".join(value.split())
        if name == "authorization":
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() != "bearer":
                continue
            value = token
        elif name == WS_PROTOCOL:
            for key in _ws_keys(value):
                if key.strip():
                    found.setdefault(name, []).append(key.strip())
            continue
        value = value.strip()
        if value:
            found.setdefault(name, []).append(value)
    if "key=" in query or "token=" in query or "%" in query:  # a name may be %-encoded
        for k, v in parse_qsl(query):
            place = _QUERY_PLACES.get(k)
            if place is not None and v.strip():
                found.setdefault(place, []).append(v.strip())
    return found


def presented_keys(headers: Mapping[str, str], query: str = "") -> list[str]:
    """Every API key the request carries (usually one): headers in :data:`KEY_HEADERS`
    order, then ``?key=`` and ``?access_token=`` (Gemini's)."""
    found = _values(headers, query)
    return [v for place in (*KEY_HEADERS, QUERY_KEY, QUERY_TOKEN) for v in found.get(place, ())]


def presented(headers: Mapping[str, str], query: str, provider: MeteredProvider) -> Presented:
    """The key ``provider`` will authenticate (billed), and whether there are others."""
    found = _values(headers, query)
    if not found:
        return _NO_KEY
    if len(found) == 1:  # the usual request: one key in one place
        ((place, only),) = found.items()
        if len(only) == 1:
            read = place == GATEWAY_HEADER or place in places(provider)
            return Presented(only[0] if read else None, 1)
    distinct = len({v for values in found.values() for v in values})
    billed: str | None = None
    for place in (*places(provider), GATEWAY_HEADER):
        values = found.get(place)
        if values:
            billed = values[0] if len(set(values)) == 1 else None
            break
    return Presented(billed, distinct)
