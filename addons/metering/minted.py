"""Ephemeral keys a consumer mints through the proxy, attributed to that consumer.

A browser or phone app must not hold a real API key, so its backend mints a short-lived
one for it and the app opens its voice session with that:

- OpenAI Realtime: ``POST /v1/realtime/client_secrets`` answers ``{"value": "ek_...",
  "expires_at": <epoch s>, ...}``; the beta's ``POST /v1/realtime/sessions`` (and
  ``/transcription_sessions``; Azure's ``/openai/realtimeapi/sessions``) answers
  ``{"client_secret": {"value": "ek_...", "expires_at": ...}, ...}``. The session then
  presents the ``ek_`` key (``Authorization: Bearer``, or the browser's subprotocol).
- Gemini Live: ``POST /v1alpha/auth_tokens`` answers ``{"name": "auth_tokens/...",
  "expireTime": "<RFC 3339>", ...}``; the session presents the name as ``?access_token=``
  on ``BidiGenerateContentConstrained``.

The catalog cannot list such keys, so their sessions were billed to nobody (and refused
outright in ``reject`` mode). When the mint goes through the proxy with a consumer's key,
the proxy now remembers the minted key's fingerprint (never the key) with the
fingerprint of the key that minted it, until the minted key expires: a session presenting
it is the minting consumer's, checked against that consumer's limits, and never given an
injected key (the minted key is the provider's own credential for that session). What
the proxy remembers survives a restart: each mint appends one line (the two
fingerprints and the expiry, never a key) to ``minted-keys.log`` in the spool directory
(0600), read back at start (:meth:`MintedKeys.attach`). A fleet on a PostgreSQL lake
shares them (:mod:`addons.metering.fleetkeys`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from mitmproxy import http

from addons.metering import jsoncodec
from addons.metering.decoding import IncrementalDecoder
from addons.metering.providers import normalise_path
from meterline.fingerprint import fingerprint

log = logging.getLogger("meterline.proxy")

_OPENAI_MINT = re.compile(
    r"/realtime(?:api)?/(?:client_secrets|sessions|transcription_sessions)/?$"
)
_GEMINI_MINT = re.compile(r"/auth_tokens/?$")
#: A mint's answer is a small JSON object; a bigger one (or one decoding past this) is
#: not read.
MAX_REPLY = 256 * 1024
#: How long a minted key is remembered when its answer gives no expiry (Gemini's default
#: is 30 minutes, OpenAI's 10), and at most (a far-off expiry cannot pin an entry).
DEFAULT_TTL = 30 * 60.0
MAX_TTL = 24 * 3600.0
#: Minted keys remembered at once; past it the expired go first, then the oldest.
LIMIT = 10_000
#: The file in the spool directory that keeps them across a restart.
LOG_NAME = "minted-keys.log"


def is_mint(flavor: str, method: str, path: str) -> bool:
    """Whether a request mints an ephemeral key (see the module docstring)."""
    if method != "POST":
        return False
    if flavor == "openai":
        return _OPENAI_MINT.search(normalise_path(path)) is not None
    if flavor == "gemini":
        return _GEMINI_MINT.search(normalise_path(path)) is not None
    return False


#: How the minted keys begin: OpenAI's ``ek_`` (the client secret), Gemini's token name.
MINTED_PREFIXES = {"openai": "ek_", "gemini": "auth_tokens/"}


def looks_minted(flavor: str, key: str) -> bool:
    """Whether ``key`` has the shape of a key a mint of ``flavor`` answers."""
    prefix = MINTED_PREFIXES.get(flavor)
    return prefix is not None and key.startswith(prefix)


def minted_key(flavor: str, reply: Any, now: float) -> tuple[str, float] | None:
    """The key a mint's JSON answer hands out, and when it expires (epoch seconds)."""
    if not isinstance(reply, dict):
        return None
    expires: float | None = None
    if flavor == "gemini":
        key = reply.get("name")
        if not (isinstance(key, str) and key.startswith("auth_tokens/")):
            return None
        expire_time = reply.get("expireTime")
        if isinstance(expire_time, str):
            try:
                expires = datetime.fromisoformat(expire_time.replace("Z", "+00:00")).timestamp()
            except ValueError:
                expires = None
    else:
        holder = reply.get("client_secret") if "client_secret" in reply else reply
        if not isinstance(holder, dict):
            return None
        key = holder.get("value")
        if not (isinstance(key, str) and key):
            return None
        at = holder.get("expires_at")
        if isinstance(at, int | float) and not isinstance(at, bool):
            expires = float(at)
    if expires is None or expires <= now:
        expires = now + DEFAULT_TTL
    return key, min(expires, now + MAX_TTL)


class MintedKeys:
    """Fingerprint of a minted key -> (fingerprint of the key that minted it, expiry)."""

    def __init__(self, limit: int = LIMIT) -> None:
        self._owners: dict[str, tuple[str, float]] = {}
        self._limit = limit
        self.minting: dict[str, tuple[str, str]] = {}
        """Mints in flight: flow id -> (fingerprint of the consumer key that asked, the
        provider's flavor)."""

        self._fd: int | None = None
        self._path: Path | None = None
        self._lines = 0
        """Lines in the file: rewritten with the live entries only once it holds twice
        as many (a mint per voice session: it would grow for as long as the proxy runs)."""
        self._failed = False
        self.share: Callable[[str, str, float], None] | None = None
        """Called with each key minted here (the fleet's table: :mod:`.fleetkeys`)."""

    def __bool__(self) -> bool:
        return bool(self._owners)

    def attach(self, path: Path) -> None:
        """Keep the keys in ``path`` (in the spool directory): read back those an earlier
        run minted that have not expired, then append each new one."""
        self.close()
        now = time.time()
        try:
            with path.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        key_fp, owner, expires = json.loads(line)
                        self.add(str(key_fp), str(owner), float(expires), now)
                    except (ValueError, TypeError):
                        continue  # a line cut by a crash: that mint only
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("meterline: cannot read minted keys from %s: %s", path, e.strerror)
        self._path = path
        self._rewrite(now)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None

    def _rewrite(self, now: float) -> None:
        """The file anew, the live entries only (a new file renamed over the old one)."""
        assert self._path is not None
        self.close()
        live = [(fp, o, x) for fp, (o, x) in self._owners.items() if x > now]
        tmp = self._path.with_name(self._path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(entry) + "\n" for entry in live)
            os.replace(tmp, self._path)
            self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND, 0o600)
        except OSError as e:
            self._failure(e)
            return
        self._lines = len(live)

    def _append(self, entry: tuple[str, str, float], now: float) -> None:
        if self._path is None:
            return
        if self._fd is None or self._lines > 2 * len(self._owners) + 100:
            self._rewrite(now)
            return  # the new entry is in it
        try:
            os.write(self._fd, (json.dumps(entry) + "\n").encode())
        except OSError as e:
            self._failure(e)
            return
        self._lines += 1

    def _failure(self, e: OSError) -> None:
        """Logged once: the keys stay known in memory, not after a restart."""
        self.close()
        if not self._failed:
            self._failed = True
            log.warning(
                "meterline: cannot keep minted keys in %s (%s): they are known until the "
                "proxy stops",
                self._path,
                e.strerror,
            )

    def asked(self, flow: http.HTTPFlow, owner_fingerprint: str, flavor: str) -> None:
        """A consumer's mint request is on its way (``requestheaders``)."""
        self.minting[flow.id] = (owner_fingerprint, flavor)

    def answered(self, flow: http.HTTPFlow) -> None:
        """A mint's answer (``response``): a 2xx JSON answer's key is remembered."""
        asked = self.minting.pop(flow.id, None)
        resp = flow.response
        if asked is None or resp is None or not 200 <= resp.status_code < 300:
            return
        owner, flavor = asked
        raw = resp.raw_content
        if not raw or len(raw) > MAX_REPLY:
            return
        now = time.time()
        try:
            decoder = IncrementalDecoder(resp.headers.get("content-encoding", ""), MAX_REPLY)
            body = decoder.decode(raw) + decoder.flush()
            found = minted_key(flavor, jsoncodec.loads(body), now)
        except ValueError:
            return
        if found is not None:
            key, expires = found
            key_fp = fingerprint(key)
            self.add(key_fp, owner, expires, now)
            self._append((key_fp, owner, expires), now)
            if self.share is not None:
                self.share(key_fp, owner, expires)

    def forget(self, flow: http.HTTPFlow) -> None:
        """The mint failed on its way (``error``)."""
        self.minting.pop(flow.id, None)

    def add(self, key_fingerprint: str, owner_fingerprint: str, expires: float, now: float) -> None:
        owners = self._owners
        if len(owners) >= self._limit and key_fingerprint not in owners:
            for fp in [fp for fp, (_, at) in owners.items() if at <= now]:
                del owners[fp]
            while len(owners) >= self._limit:
                del owners[next(iter(owners))]
        owners.pop(key_fingerprint, None)
        owners[key_fingerprint] = (owner_fingerprint, expires)

    def owner(self, key_fingerprint: str, now: float | None = None) -> str | None:
        """The fingerprint of the key that minted this one, while it has not expired."""
        found = self._owners.get(key_fingerprint)
        if found is None:
            return None
        owner, expires = found
        if expires <= (time.time() if now is None else now):
            del self._owners[key_fingerprint]
            return None
        return owner
