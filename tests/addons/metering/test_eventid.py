"""Event ids name one call (addons/metering/eventid.py)."""

from __future__ import annotations

import pytest

from addons.metering.eventid import beside_id, event_id, is_unique_id


def test_response_and_request_id_together() -> None:
    assert event_id("openai", "chatcmpl-abc123", "req_0123456789") == (
        "openai:chatcmpl-abc123@req_0123456789"
    )


def test_response_id_alone_without_a_request_id() -> None:
    assert event_id("openai", "chatcmpl-abc123", None) == "openai:chatcmpl-abc123"


def test_groq_stub_ids_of_different_calls_differ() -> None:
    a = event_id("groq", "stub", "req_01k5aaaaaaaa")
    b = event_id("groq", "stub", "req_01k5bbbbbbbb")
    assert a != b and a == "groq:stub@req_01k5aaaaaaaa"


@pytest.mark.parametrize("rid", ["stub", "STUB", "0", "null", "short", None, ""])
def test_non_unique_or_missing_id_without_request_id_gets_a_fresh_id(rid: str | None) -> None:
    first, second = event_id("groq", rid, None), event_id("groq", rid, None)
    assert first.startswith("ml:") and second.startswith("ml:") and first != second


def test_a_non_unique_request_id_is_not_trusted_either() -> None:
    assert event_id("groq", "stub", "1").startswith("ml:")
    assert event_id("openai", "chatcmpl-abc123", "1") == "openai:chatcmpl-abc123"


@pytest.mark.parametrize(
    ("rid", "unique"),
    [("msg_011CdD8kCHePDwkWhKt6aCDv", True), ("8pMcab_EMqWd28oP46bOiAk", True), ("stub", False)],
)
def test_is_unique_id(rid: str, unique: bool) -> None:
    assert is_unique_id(rid) is unique


def test_beside_ids() -> None:
    assert beside_id("anthropic:msg_1@req_1", 0) == "anthropic:msg_1@req_1#0"
