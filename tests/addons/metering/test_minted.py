"""Ephemeral keys minted through the proxy: the answers read, what is remembered, and
how long (:mod:`addons.metering.minted`)."""

from __future__ import annotations

from typing import Any

import pytest

from addons.metering.keys import KeyBook, injection_env_var
from addons.metering.minted import (
    DEFAULT_TTL,
    MAX_TTL,
    MintedKeys,
    is_mint,
    looks_minted,
    minted_key,
)
from addons.metering.providers import MeteredProvider
from meterline.catalog import parse_catalog
from meterline.fingerprint import fingerprint

NOW = 1_780_000_000.0


@pytest.mark.parametrize(
    "flavor,method,path,mints",
    [
        ("openai", "POST", "/v1/realtime/client_secrets", True),
        ("openai", "POST", "/v1/realtime/sessions", True),
        ("openai", "POST", "/v1/realtime/transcription_sessions/", True),
        ("openai", "POST", "/openai/v1/realtime/client_secrets?api-version=x", True),
        ("openai", "POST", "/openai/realtimeapi/sessions?api-version=2025-04-01-preview", True),
        ("openai", "POST", "/v1/realtime/client_%73ecrets", True),  # as the upstream reads it
        ("openai", "GET", "/v1/realtime/client_secrets", False),
        ("openai", "POST", "/v1/realtime/calls", False),
        ("openai", "POST", "/v1/chat/completions", False),
        ("gemini", "POST", "/v1alpha/auth_tokens", True),
        ("gemini", "POST", "/v1alpha/auth_tokens?key=AIza", True),
        ("gemini", "POST", "/v1beta/models/gemini-2.5-flash:generateContent", False),
        ("anthropic", "POST", "/v1/realtime/client_secrets", False),
    ],
)
def test_which_requests_mint_a_key(flavor: str, method: str, path: str, mints: bool) -> None:
    assert is_mint(flavor, method, path) is mints


@pytest.mark.parametrize(
    "flavor,reply,found",
    [
        ("openai", {"value": "ek_1", "expires_at": NOW + 600, "session": {}}, ("ek_1", NOW + 600)),
        (
            "openai",
            {"client_secret": {"value": "ek_2", "expires_at": NOW + 60}},
            ("ek_2", NOW + 60),
        ),
        ("openai", {"value": "ek_3"}, ("ek_3", NOW + DEFAULT_TTL)),  # no expiry given
        ("openai", {"value": "ek_4", "expires_at": NOW - 1}, ("ek_4", NOW + DEFAULT_TTL)),
        ("openai", {"value": "ek_5", "expires_at": NOW + 10**9}, ("ek_5", NOW + MAX_TTL)),
        ("openai", {"value": "ek_6", "expires_at": True}, ("ek_6", NOW + DEFAULT_TTL)),
        ("openai", {"client_secret": None}, None),
        ("openai", {"value": ""}, None),
        ("openai", {"value": 7}, None),
        ("openai", ["ek_1"], None),
        (
            "gemini",
            {"name": "auth_tokens/abc", "expireTime": "2026-05-28T20:36:40Z"},
            ("auth_tokens/abc", 1_780_000_600.0),
        ),  # fmt: skip
        (
            "gemini",
            {"name": "auth_tokens/abc", "expireTime": "soon"},
            ("auth_tokens/abc", NOW + DEFAULT_TTL),
        ),  # fmt: skip
        ("gemini", {"name": "cachedContents/abc"}, None),
        ("gemini", {"name": None}, None),
    ],
)
def test_the_key_a_mint_answers(flavor: str, reply: Any, found: tuple[str, float] | None) -> None:
    assert minted_key(flavor, reply, NOW) == found


def test_a_minted_key_is_known_until_it_expires() -> None:
    minted = MintedKeys()
    minted.add("sha256:ek", "sha256:alice", NOW + 60, NOW)
    assert minted.owner("sha256:ek", NOW + 59) == "sha256:alice"
    assert minted.owner("sha256:ek", NOW + 60) is None
    assert minted.owner("sha256:ek", NOW) is None  # forgotten once found expired
    assert not minted


def test_past_the_limit_the_expired_go_first_then_the_oldest() -> None:
    minted = MintedKeys(limit=3)
    minted.add("a", "alice", NOW + 10, NOW)
    minted.add("b", "alice", NOW + 1000, NOW)
    minted.add("c", "alice", NOW + 1000, NOW)
    minted.add("d", "alice", NOW + 1000, NOW + 20)  # "a" has expired: it makes room
    assert [minted.owner(k, NOW + 20) for k in "bcd"] == ["alice"] * 3
    minted.add("e", "alice", NOW + 1000, NOW + 20)  # none expired: the oldest, "b", goes
    assert [minted.owner(k, NOW + 20) for k in "bcde"] == [None, "alice", "alice", "alice"]


CATALOG = parse_catalog(
    f"""
providers:
  - name: openai
    flavor: openai
    hosts: [api.openai.com]
consumers:
  - name: alice
    keys: [{{fingerprint: "{fingerprint("sk-alice")}"}}]
    inject: {{openai: OPENAI_API_KEY}}
"""
)
OPENAI = MeteredProvider("openai", "openai", "bearer")


def test_a_minted_key_is_its_minters_and_never_replaced() -> None:
    minted = MintedKeys()
    book = KeyBook(CATALOG, minted)
    alice = book.identify_key("sk-alice")
    assert alice.consumer is not None and not alice.minted
    assert injection_env_var(alice, OPENAI) == "OPENAI_API_KEY"

    assert book.identify_key("ek_1").consumer is None
    minted.add(fingerprint("ek_1"), fingerprint("sk-alice"), 4e9, NOW)
    ident = book.identify_key("ek_1")
    assert ident.consumer is not None and ident.consumer.name == "alice"
    assert (ident.fingerprint, ident.minted) == (fingerprint("ek_1"), True)
    assert book.identify_fingerprint(fingerprint("ek_1")) == ident
    assert injection_env_var(ident, OPENAI) is None  # the provider issued it: sent as is

    # A catalog without alice's key (revoked): what she minted is nobody's either.
    assert KeyBook(parse_catalog("consumers: []"), minted).identify_key("ek_1").consumer is None


def test_the_keys_an_earlier_run_kept_are_read_back_without_the_expired(tmp_path: Any) -> None:
    """The spool's ``minted-keys.log``: a live key is known again, an expired one and a
    line cut by a crash are dropped, and the file is rewritten with the live one only."""
    import json
    import time

    kept = tmp_path / "minted-keys.log"
    now = time.time()
    kept.write_text(
        json.dumps(["sha256:live", "sha256:alice", now + 600]) + "\n"
        + json.dumps(["sha256:gone", "sha256:alice", now - 1]) + "\n"
        + '["sha256:cut", "sha2'  # a crash mid-line
    )  # fmt: skip
    minted = MintedKeys()
    minted.attach(kept)
    try:
        assert minted.owner("sha256:live") == "sha256:alice"
        assert minted.owner("sha256:gone") is None and minted.owner("sha256:cut") is None
        assert [json.loads(line)[0] for line in kept.read_text().splitlines()] == ["sha256:live"]
        assert kept.stat().st_mode & 0o777 == 0o600
    finally:
        minted.close()


def test_only_keys_shaped_like_a_mint_s_are_looked_up_in_the_fleet() -> None:
    """A socket's unknown key is looked up among the fleet's mints only when a mint of
    its provider could have answered it: not a stranger's own key."""
    assert looks_minted("openai", "ek_68af0c2b1d")
    assert looks_minted("gemini", "auth_tokens/abc123")
    assert not looks_minted("openai", "sk-proj-stranger")
    assert not looks_minted("gemini", "AIzaSy-stranger")
    assert not looks_minted("anthropic", "ek_68af0c2b1d")
