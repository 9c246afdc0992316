"""Requests to a provider that are not metered calls but carry a consumer's key: a
metered WebSocket's upgrade and the mint of an ephemeral key.

Neither is billed itself, but both are the consumer's: key injection applies to them as
to a call (before, the gateway key went upstream and the provider refused the session),
a socket is billed to the consumer whose key its upgrade carried, and a minted key
becomes the minting consumer's (:mod:`addons.metering.minted`).
"""

from __future__ import annotations

import logging

from mitmproxy import http

from addons.metering import attribution, errors, keyecho, keys, minted
from addons.metering.minted import MintedKeys
from addons.metering.providers import MeteredProvider

log = logging.getLogger("meterline.proxy")

INJECTED_FOR = "meterline_injected_for"
"""``flow.metadata`` key: the fingerprint of the consumer key a WebSocket upgrade carried
before the proxy put the provider's key in its place (the socket is billed to it)."""


def inject(
    flow: http.HTTPFlow, provider: MeteredProvider, by_name: bool, keybook: keys.KeyBook
) -> keys.Identity | None:
    """The consumer's provider key put in place of its own, if the catalog gives it one;
    its identity, or None when the injection failed (the flow is then answered 502).
    ``by_name``: the provider is named (Host, SNI), not the destination: no key goes
    there."""
    req = flow.request
    path, _, query = req.path.partition("?")
    keyset = attribution.presented(req.headers, query, provider)
    identity = keybook.identify_key(keyset.billed)
    env = keys.injection_env_var(identity, provider)
    if env is None:
        return identity
    if by_name:
        message = f"Meterline proxy: key injection for {provider.name} needs the "
        message += f"request to go to the provider's own host, not {req.host}"
        log.error("meterline: %s: %s", flow.id, message)
        errors.respond(flow, provider.flavor, "injection_failed", message)
        return None
    try:
        query = keys.inject_key(req.headers, query, provider, env)
    except keys.InjectionError as e:
        log.error("meterline: %s: %s", flow.id, e)
        errors.respond(flow, provider.flavor, "injection_failed", f"Meterline proxy: {e}")
        return None
    req.path = f"{path}?{query}" if query else path
    # the socket is the consumer's, though the key it now carries is the provider's
    flow.metadata[INJECTED_FOR] = identity.fingerprint
    return identity


class EchoGuard:
    """The provider keys injected into side flows, until their answer has been scrubbed
    of them: a provider quotes the key it got in an authentication error ("Incorrect API
    key provided: sk-...", "API key not valid: ..."), and a mint or a socket's upgrade
    refused so handed the organisation's key to the consumer, as calls did before
    :mod:`addons.metering.keyecho`. Held in memory only, by flow id."""

    def __init__(self) -> None:
        self._keys: dict[str, bytes] = {}

    def __bool__(self) -> bool:
        return bool(self._keys)

    def note(self, flow: http.HTTPFlow, provider: MeteredProvider) -> None:
        if INJECTED_FOR in flow.metadata:
            self._keys[flow.id] = keys.injected_key(flow.request.headers, provider).encode()

    def scrub_headers(self, flow: http.HTTPFlow) -> None:
        key = self._keys.get(flow.id)
        if key is not None and flow.response is not None:
            keyecho.scrub_headers(flow.response, key)

    def scrub_body(self, flow: http.HTTPFlow) -> None:
        key = self._keys.pop(flow.id, None)
        if key is not None and flow.response is not None:
            keyecho.scrub_body(flow.response, key)

    def forget(self, flow: http.HTTPFlow) -> None:
        self._keys.pop(flow.id, None)


def socket_identity(
    flow: http.HTTPFlow, provider: MeteredProvider, keybook: keys.KeyBook
) -> keys.Identity:
    """Who an open socket is billed to: the consumer whose key its upgrade carried (known
    by its fingerprint once the provider's key replaced it)."""
    if INJECTED_FOR in flow.metadata:
        return keybook.identify_fingerprint(flow.metadata[INJECTED_FOR])
    req = flow.request
    keyset = attribution.presented(req.headers, req.path.partition("?")[2], provider)
    return keybook.identify_key(keyset.billed)


def note_mint(
    flow: http.HTTPFlow, provider: MeteredProvider, keybook: keys.KeyBook, minted: MintedKeys
) -> bool:
    """A request minting an ephemeral key: with a consumer's key (one, not itself
    minted), the key it answers will be remembered as that consumer's. Whether the
    consumer's provider key is to be injected (:func:`inject`, in the ``request`` hook)."""
    query = flow.request.path.partition("?")[2]
    keyset = attribution.presented(flow.request.headers, query, provider)
    identity = keybook.identify_key(keyset.billed)
    if identity.consumer is None or identity.minted or keyset.ambiguous:
        return False
    assert identity.fingerprint is not None
    minted.asked(flow, identity.fingerprint, provider.flavor)
    return keys.injection_env_var(identity, provider) is not None


def stranger_key(
    flow: http.HTTPFlow, provider: MeteredProvider, keybook: keys.KeyBook
) -> str | None:
    """The fingerprint of the one key a side flow presents when no consumer holds it and
    no key minted through this proxy is it (another proxy of the fleet may have minted
    it: :mod:`addons.metering.fleetkeys`); None otherwise, and for a key that cannot be
    one a provider minted (a stranger's own key is not looked up)."""
    req = flow.request
    keyset = attribution.presented(req.headers, req.path.partition("?")[2], provider)
    if keyset.billed is None or not minted.looks_minted(provider.flavor, keyset.billed):
        return None
    identity = keybook.identify_key(keyset.billed)
    if identity.consumer is not None or keyset.ambiguous:
        return None
    return identity.fingerprint
