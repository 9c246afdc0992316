"""Which Responses API flows store an event, and under which id (background mode)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from addons.metering.background import (
    CLOCK_SKEW_S,
    RETENTION_S,
    Keyed,
    Skip,
    decide,
    event_time,
    tap_for,
)
from addons.metering.extract import new_extractor

#: An hour before the run: a plausible ``created_at`` for a response read now.
CREATED_AT = int(time.time()) - 3600


def _body(status: str, background: bool = True, usage: Any = None) -> dict[str, Any]:
    return {"id": "resp_1", "object": "response", "created_at": CREATED_AT, "status": status,
            "background": background, "model": "o4-mini", "output": [], "usage": usage}  # fmt: skip


USAGE = {"input_tokens": 10, "output_tokens": 5}


def _read(tap_kind: tuple[str, str], body: bytes, content_type: str) -> Any:
    tap = tap_for("openai", *tap_kind)
    assert tap is not None
    extractor = new_extractor(
        "openai", path=tap_kind[1], content_type=content_type, reader=tap.new_reader
    )
    extractor.feed(body)
    usage = extractor.finish()
    return tap, usage


def _sse(*bodies: dict[str, Any]) -> bytes:
    kinds = ["response.created"] + ["response.in_progress"] * (len(bodies) - 2)
    kinds.append(
        "response.completed" if bodies[-1]["status"] == "completed" else "response.in_progress"
    )
    return b"".join(
        f"event: {k}\ndata: {json.dumps({'type': k, 'response': b})}\n\n".encode()
        for k, b in zip(kinds, bodies, strict=True)
    )


GET = ("GET", "/v1/responses/resp_1")
POST = ("POST", "/v1/responses")
CANCEL = ("POST", "/v1/responses/resp_1/cancel")
KEYED = Keyed("response:openai:resp_1", CREATED_AT)


@pytest.mark.parametrize(
    "kind,body,expected",
    [
        (GET, _body("completed", usage=USAGE), KEYED),
        (GET, _body("incomplete", usage=USAGE), KEYED),
        (GET, _body("failed"), KEYED),
        (CANCEL, _body("cancelled", usage=USAGE), KEYED),
        (GET, _body("queued"), Skip),
        (GET, _body("in_progress"), Skip),
        (GET, _body("completed", background=False, usage=USAGE), Skip),  # billed at its POST
        (POST, _body("queued"), Skip),  # no guess: billed when read
        (POST, _body("completed", usage=USAGE), KEYED),
        (POST, _body("completed", background=False, usage=USAGE), None),  # an ordinary call
    ],
)
def test_what_a_json_body_stores(kind: tuple[str, str], body: Any, expected: Any) -> None:
    tap, _ = _read(kind, json.dumps(body).encode(), "application/json")
    got = decide(tap, "openai", status_code=200, sse=False, request_json=dict)
    assert got == expected if not isinstance(expected, type) else isinstance(got, expected)


def test_a_stream_stores_only_when_its_final_event_came() -> None:
    whole = _sse(_body("queued"), _body("in_progress"), _body("completed", usage=USAGE))
    for kind in (GET, POST):
        tap, usage = _read(kind, whole, "text/event-stream")
        assert decide(tap, "openai", status_code=200, sse=True, request_json=dict) == KEYED
        assert (usage.input, usage.output, usage.partial) == (10, 5, False)
    cut = _sse(_body("queued"), _body("in_progress"), _body("in_progress"))
    tap, _ = _read(POST, cut, "text/event-stream")
    verdict = decide(tap, "openai", status_code=200, sse=True, request_json=dict)
    assert isinstance(verdict, Skip)


def test_a_background_post_with_no_answer_read_stores_nothing() -> None:
    """The client left before the answer: the provider runs the response on, and bills it
    when read (before: input estimated from the request)."""
    tap = tap_for("openai", *POST)
    assert tap is not None
    asked = b'{"model": "o4-mini", "background": true}'
    verdict = decide(
        tap, "openai", status_code=0, sse=False, request_json=lambda: json.loads(asked)
    )
    assert isinstance(verdict, Skip)
    plain = decide(tap, "openai", status_code=0, sse=False, request_json=dict)
    assert plain is None
    refused = decide(
        tap, "openai", status_code=429, sse=False, request_json=lambda: json.loads(asked)
    )
    assert refused is None  # an error: the usual zero-token event


@pytest.mark.parametrize(
    ("asked", "background"),
    [
        (rb'{"model": "o4-mini", "\u0062ackground": true}', True),  # the key spelled escaped
        (b'{"background": true, "background": false}', False),  # the last value counts
        (b'{"text": {"format": {"schema": {"background": true}}}}', False),  # not top-level
        (b"not json", False),
    ],
)
def test_a_post_with_no_answer_read_is_background_as_the_provider_parses_it(
    asked: bytes, background: bool
) -> None:
    """Before: a byte match decided, so an escaped key was an ordinary call (estimated now
    and billed again when read) and a duplicate or nested one was billed never."""
    tap = tap_for("openai", *POST)
    assert tap is not None
    parsed = json.loads(asked) if asked.startswith(b"{") else None
    verdict = decide(tap, "openai", status_code=0, sse=False, request_json=lambda: parsed)
    assert isinstance(verdict, Skip) if background else verdict is None


def test_failed_reads_and_listings_store_nothing() -> None:
    tap = tap_for("openai", *GET)
    assert tap is not None
    assert isinstance(decide(tap, "p", status_code=404, sse=False, request_json=dict), Skip)
    tap, _ = _read(GET, b'{"object": "list", "data": []}', "application/json")
    assert isinstance(decide(tap, "p", status_code=200, sse=False, request_json=dict), Skip)


def test_only_openai_responses_flows_are_tapped() -> None:
    assert tap_for("openai", "POST", "/v1/chat/completions") is None
    assert tap_for("anthropic", "POST", "/v1/messages") is None
    assert tap_for("openai", "POST", "/v1/responses/compact") is None
    post, get = tap_for("openai", "POST", "/openai/v1/responses"), tap_for("openai", *GET)
    assert post is not None and not post.reads and get is not None and get.reads


def test_a_response_read_twice_is_counted_once_against_limits() -> None:
    """Two reads of one ended background response make one event id: governance counts
    it once (before, its pending figures were added twice and one copy never left)."""
    from datetime import UTC, datetime

    from addons.metering.governance import Governance
    from meterline.catalog import Catalog

    gov = Governance()
    gov.use_catalog(
        Catalog.model_validate(
            {
                "consumers": [{"name": "cap"}],
                "features": [
                    {
                        "key": "out",
                        "name": "out",
                        "meter": {"provider": "openai", "model": "o4*", "token_types": ["output"]},
                    }
                ],  # fmt: skip
                "plans": [
                    {
                        "key": "cap",
                        "name": "cap",
                        "currency": "USD",
                        "entitlements": [{"feature": "out", "limit": 1000}],
                    }
                ],  # fmt: skip
                "customers": [
                    {
                        "key": "co",
                        "name": "co",
                        "currency": "USD",
                        "consumers": ["cap"],
                        "subscriptions": [{"plan": "cap", "start": "2026-01-01T00:00:00Z"}],
                    }
                ],  # fmt: skip
            }
        )
    )
    ts = datetime.now(UTC).replace(tzinfo=None).isoformat()
    row = {"event_id": "response:openai:resp_1", "consumer": "cap", "provider": "openai",
           "model": "o4-mini", "ts": ts, "output_tokens": 300}  # fmt: skip
    gov.finish("poll-1", [row])
    gov.finish("poll-2", [dict(row)])
    assert list(gov.counters.pending_sum.values()) == [300]


def test_the_response_says_whether_it_is_in_the_background() -> None:
    """Before: ``"background": true`` anywhere in the request body (a duplicate key the
    provider overrides, a JSON-schema property) made a cut ordinary stream store nothing,
    and a non-background response streamed back by a lax server was billed twice."""
    cut = _sse(_body("in_progress", background=False), _body("in_progress", background=False))
    tap, _ = _read(POST, cut, "text/event-stream")
    asked = b'{"background": true, "background": false, "stream": true}'
    assert (
        decide(tap, "openai", status_code=200, sse=True, request_json=lambda: json.loads(asked))
        is None
    )
    again = _sse(
        _body("in_progress", background=False), _body("completed", background=False, usage=USAGE)
    )
    tap, _ = _read(GET, again, "text/event-stream")
    verdict = decide(tap, "openai", status_code=200, sse=True, request_json=dict)
    assert isinstance(verdict, Skip)
    quiet = [
        {k: v for k, v in _body(status, usage=USAGE).items() if k != "background"}
        for status in ("in_progress", "completed")
    ]
    tap, _ = _read(GET, _sse(*quiet), "text/event-stream")  # a resumed stream that does not say
    assert decide(tap, "openai", status_code=200, sse=True, request_json=dict) == KEYED


READ_AT = 1767225600.0  # 2026-01-01


@pytest.mark.parametrize(
    "created_at,expected",
    [
        (READ_AT - 60, READ_AT - 60),
        (READ_AT - 60.5, READ_AT - 60.5),  # a float is a time too, the same on every read
        (READ_AT - RETENTION_S, READ_AT - RETENTION_S),  # the oldest a provider still serves
        (READ_AT + CLOCK_SKEW_S, READ_AT + CLOCK_SKEW_S),  # the provider's clock ahead
        (READ_AT - RETENTION_S - 1, None),
        (READ_AT + CLOCK_SKEW_S + 1, None),
        (0, None),  # would bill in 1970: a period long invoiced
        (-1, None),
        (READ_AT + 365 * 86400, None),  # a period not begun
        (READ_AT * 1000, None),  # milliseconds
        (253402300800, None),  # year 10000: OverflowError before
        (1e30, None),
        (None, None),
    ],
)
def test_event_time_takes_a_plausible_created_at_only(
    created_at: float | None, expected: float | None
) -> None:
    assert event_time(created_at, READ_AT) == expected


@pytest.mark.parametrize(
    "created_at",
    ["absent", None, "2026-01-01", True, 1e30, 10**400, float("nan"), float("inf"), [1], 0, -1],
)
def test_a_created_at_that_is_no_plausible_time_keys_the_read_time(created_at: Any) -> None:
    """Not a crash (OverflowError on 1e30 and 10**400), not 1970: ``at`` None, so the event's
    ts is the read's; the id is the same on every read."""
    body = _body("completed", usage=USAGE)
    if created_at == "absent":
        del body["created_at"]
    else:
        body["created_at"] = created_at
    tap, _ = _read(GET, json.dumps(body).encode(), "application/json")
    got = decide(tap, "openai", status_code=200, sse=False, request_json=dict, now=lambda: READ_AT)
    assert got == Keyed("response:openai:resp_1", None)
