from __future__ import annotations

import pytest
from mitmproxy.http import Headers

from addons.metering.attribution import Presented, presented
from addons.metering.providers import MeteredProvider

OPENAI = MeteredProvider("openai", "openai", "bearer")
AZURE = MeteredProvider("azure-openai", "openai", "api-key")
ANTHROPIC = MeteredProvider("anthropic", "anthropic", "x-api-key")
AUTH_A = ("authorization", "Bearer a")
GEMINI = MeteredProvider("gemini", "gemini", "x-goog-api-key")


def _headers(*fields: tuple[str, str]) -> Headers:
    return Headers([(k.encode(), v.encode()) for k, v in fields])


@pytest.mark.parametrize(
    "provider,fields,query,expected",
    [
        (OPENAI, [("Authorization", "Bearer a")], "", Presented("a", 1)),
        (OPENAI, [("authorization", "Bearer a"), ("x-api-key", "b")], "", Presented("a", 2)),
        (OPENAI, [("x-api-key", "b")], "", Presented(None, 1)),  # OpenAI reads no x-api-key
        (OPENAI, [AUTH_A, ("authorization", "Bearer b")], "", Presented(None, 2)),
        (OPENAI, [AUTH_A, AUTH_A], "", Presented("a", 1)),
        (OPENAI, [("authorization", "Basic a")], "", Presented(None, 0)),
        (AZURE, [("api-key", "z"), ("authorization", "Bearer a")], "", Presented("z", 2)),
        (ANTHROPIC, [("authorization", "Bearer a"), ("x-api-key", "b")], "", Presented("b", 2)),
        (GEMINI, [("x-goog-api-key", "g")], "key=q", Presented("g", 2)),
        (GEMINI, [], "alt=sse&key=q", Presented("q", 1)),
        (GEMINI, [("x-api-key", "b")], "", Presented(None, 1)),
        (OPENAI, [("apikey", "gw")], "", Presented("gw", 1)),  # a gateway key (injection)
        (OPENAI, [("authorization", "Bearer gw"), ("apikey", "gw")], "", Presented("gw", 1)),
        (OPENAI, [], "", Presented(None, 0)),
        # Spellings a server reads as a key: a folded or tab-separated Bearer, a
        # %-encoded parameter name, Google's OAuth token in the URL.
        (OPENAI, [("authorization", "Bearer\r\n a"), ("apikey", "gw")], "", Presented("a", 2)),
        (OPENAI, [("authorization", "Bearer\ta"), ("apikey", "gw")], "", Presented("a", 2)),
        (GEMINI, [("apikey", "gw")], "%6Bey=q", Presented("q", 2)),
        (GEMINI, [], "k%65y=q", Presented("q", 1)),
        (GEMINI, [("x-goog-api-key", "g")], "access_token=t", Presented("g", 2)),
        (GEMINI, [], "access_token=t", Presented("t", 1)),
        # OpenAI Realtime from a browser: the key as a handshake subprotocol (before:
        # not read, so reject mode refused a known key)
        (
            OPENAI,
            [("sec-websocket-protocol", "realtime, openai-insecure-api-key.w, x")],
            "",
            Presented("w", 1),
        ),
        (
            OPENAI,
            [AUTH_A, ("sec-websocket-protocol", "openai-insecure-api-key.w")],
            "",
            Presented("a", 2),
        ),
        (OPENAI, [("sec-websocket-protocol", "realtime")], "", Presented(None, 0)),
        # Two keys in one subprotocol line are two keys (before: only the first was
        # read, so reject forwarded a stranger's key beside a known one)
        (
            OPENAI,
            [("sec-websocket-protocol", "openai-insecure-api-key.w, openai-insecure-api-key.z")],
            "",
            Presented(None, 2),  # which one the provider reads is not known: none billed
        ),
        (
            ANTHROPIC,
            [("sec-websocket-protocol", "openai-insecure-api-key.w")],
            "",
            Presented(None, 1),
        ),
    ],
)
def test_billed_key_follows_the_provider(
    provider: MeteredProvider, fields: list[tuple[str, str]], query: str, expected: Presented
) -> None:
    got = presented(_headers(*fields), query, provider)
    assert got == expected
    assert got.ambiguous == (expected.distinct > 1)


def test_plain_mapping_headers() -> None:
    assert presented({"X-Api-Key": "b"}, "", ANTHROPIC) == Presented("b", 1)
