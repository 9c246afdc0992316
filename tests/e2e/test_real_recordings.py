"""Conformance: every real provider response in ``../shared/real-recordings`` is metered
exactly, through a real ``mitmdump`` with the addon.

Each recording's body is served by a replay upstream (:mod:`tests.support.replay`) as the
provider served it (JSON or SSE, gzip where it was, ``Content-Length`` or chunked); the
request named in its ``.meta.json`` goes through the proxy (HTTPS, CONNECT) with a
consumer's key; the
stored event must equal the recording's ``expected`` figures (the model normalised, see
``addons/metering/models.py``), carry the provider's response id and status, and the
client must get the provider's bytes. Anthropic's ``usage.iterations`` other than
``message`` must each give an event of their own. A Groq compound call whose
``usage_breakdown`` adds up is split by underlying model: its own event has no tokens,
one event per model beside it, and the sum of the call's events is ``expected``.

The corpus is read at test time, never copied into the repository. Missing under CI
(``CI=true``) is a failure, not a skip.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from addons.metering.models import normalise_model
from tests.conftest import KEYS, new_proxy
from tests.support import recordings
from tests.support.clients import ca_context
from tests.support.proxy import MeterProxy, write_catalog
from tests.support.recordings import (
    CORPUS,
    PROVIDERS,
    Recording,
    corpus_missing_reason,
    in_ci,
    load_recordings,
)
from tests.support.replay import ReplayUpstream

RECORDINGS = [] if corpus_missing_reason() else load_recordings()
KEY = KEYS["alice"]
TOKEN_COLUMNS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)


def test_corpus_is_present() -> None:
    reason = corpus_missing_reason()
    if reason is not None:
        if in_ci():
            pytest.fail(f"{reason}: CI must run the conformance corpus")
        pytest.skip(reason)
    assert sorted({r.provider for r in RECORDINGS}) == sorted(PROVIDERS), CORPUS
    assert len(RECORDINGS) >= 80


def test_missing_corpus_fails_under_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(recordings, "CORPUS", tmp_path / "absent")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the conformance corpus"):
        test_corpus_is_present()


def _auth_headers(flavor: str) -> dict[str, str]:
    if flavor == "anthropic":
        return {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    if flavor == "gemini":
        return {"x-goog-api-key": KEY}
    return {"authorization": f"Bearer {KEY}"}


class Replayed:
    """What happened to one recording: the client's bytes and the events stored."""

    def __init__(self, request_id: str, received: bytes, forwarded: bytes) -> None:
        self.request_id = request_id
        self.received = received
        self.forwarded = forwarded
        self.rows: list[dict[str, Any]] = []


@pytest.fixture(scope="module")
def replayed(
    tmp_path_factory: pytest.TempPathFactory, mitm_confdir: Path
) -> Iterator[dict[str, Replayed]]:
    """Send every recording through one proxy, then read all their events at once."""
    if not RECORDINGS:
        pytest.skip("no corpus")
    workdir = tmp_path_factory.mktemp("corpus")
    with ReplayUpstream(RECORDINGS, workdir) as upstream:
        catalog = write_catalog(
            workdir / "catalog.yaml", upstream.catalog_providers(), consumers={"alice": [KEY]}
        )
        proxy = new_proxy(workdir / "proxy", mitm_confdir, catalog).start()
        try:
            results = _send_all(proxy, upstream)
            _collect_rows(proxy, results)
        finally:
            proxy.stop()
        yield results


def _send_all(proxy: MeterProxy, upstream: ReplayUpstream) -> dict[str, Replayed]:
    results: dict[str, Replayed] = {}
    with httpx2.Client(proxy=proxy.url, verify=ca_context(proxy), timeout=30) as client:
        for rec in RECORDINGS:
            req = rec.meta["request"]
            headers = {
                "content-type": "application/json",
                "x-replay": rec.id,
                **_auth_headers(rec.flavor),
            }
            url = upstream.base_url(rec.provider, tls=True) + rec.path_and_query
            with client.stream(req["method"], url, content=rec.request_body, headers=headers) as r:
                received = b"".join(r.iter_raw())
                request_id = r.headers["x-request-id"]
            results[rec.id] = Replayed(request_id, received, upstream.received[request_id])
    return results


def _collect_rows(proxy: MeterProxy, results: dict[str, Replayed]) -> None:
    wanted = {r.request_id: r for r in results.values()}
    expected_rows = sum(1 + len(_beside(rec)) + len(_by_model(rec)) for rec in RECORDINGS)
    deadline = time.monotonic() + 60
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = proxy.events()
        if len(rows) >= expected_rows:
            break
        time.sleep(0.1)
    for row in rows:
        if row["request_id"] in wanted:
            wanted[row["request_id"]].rows.append(row)


def _beside(rec: Recording) -> list[dict[str, Any]]:
    """The recording's usage iterations billed beside the top-level figures."""
    usage = rec.meta["provider_usage"]
    # JSON: one usage object; a stream: [{"message_start.message.usage": {...}}, ...]
    reports = [usage] if isinstance(usage, dict) else [next(iter(r.values())) for r in usage]
    iterations: list[dict[str, Any]] = []
    for report in reports:
        if isinstance(report, dict) and isinstance(report.get("iterations"), list):
            iterations = report["iterations"]  # the latest report wins
    return [it for it in iterations if it.get("type") != "message"]


def _compound_report(rec: Recording) -> dict[str, Any] | None:
    """The object holding a Groq compound call's ``usage`` and ``usage_breakdown`` (the
    body, or a stream chunk's ``x_groq``; the last one), or ``None``."""
    body = rec.body
    if rec.meta["response"].get("content_encoding") or b'"usage_breakdown"' not in body:
        return None
    if rec.meta["format"] == "json":
        return dict(json.loads(body))
    holders = [
        json.loads(line.removeprefix(b"data: ")).get("x_groq", {})
        for line in body.splitlines()
        if line.startswith(b"data: {") and b'"usage_breakdown"' in line
    ]
    return dict(holders[-1]) if holders else None


def _by_model(rec: Recording) -> list[dict[str, Any]]:
    """A Groq compound call's tokens per underlying model (sub-calls summed, in order of
    first appearance) when its ``usage_breakdown`` adds up to its ``usage``; else none."""
    report = _compound_report(rec)
    if report is None or report.get("usage_breakdown") is None:  # other models: null
        return []
    calls = [(m["model"], m["usage"]) for m in report["usage_breakdown"]["models"]]
    top = report["usage"]
    if (
        sum(u["prompt_tokens"] for _, u in calls) != top["prompt_tokens"]
        or sum(u["completion_tokens"] for _, u in calls) != top["completion_tokens"]
    ):
        return []  # kept at the call's own model (Groq's streams repeat the total)
    by_model: dict[str, dict[str, Any]] = {}
    for model, usage in calls:
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        row = by_model.setdefault(model, dict.fromkeys(TOKEN_COLUMNS, 0) | {"model": model})
        row["input_tokens"] += usage["prompt_tokens"] - cached
        row["cached_input_tokens"] += cached
        row["output_tokens"] += usage["completion_tokens"]
        details = usage.get("completion_tokens_details") or {}
        row["reasoning_tokens"] += details.get("reasoning_tokens") or 0
    return list(by_model.values())


def _reported_audio(rec: Recording) -> tuple[int, int, int]:
    """The uncached prompt audio, the cached prompt audio and the output audio the
    provider reported (JSON)."""
    usage = rec.meta["provider_usage"]
    if not isinstance(usage, dict):
        return 0, 0, 0  # no stream in the corpus carries audio
    if rec.flavor == "gemini":

        def audio(key: str) -> int:
            return sum(e["tokenCount"] for e in usage.get(key, []) if e["modality"] == "AUDIO")

        cached = audio("cacheTokensDetails")
        return audio("promptTokensDetails") - cached, cached, audio("candidatesTokensDetails")
    prompt_details = usage.get("prompt_tokens_details") or {}
    output_details = usage.get("completion_tokens_details") or {}
    return prompt_details.get("audio_tokens") or 0, 0, output_details.get("audio_tokens") or 0


@pytest.mark.parametrize("rec", RECORDINGS, ids=[r.id for r in RECORDINGS])
def test_recording_is_metered_exactly(rec: Recording, replayed: dict[str, Replayed]) -> None:
    result = replayed[rec.id]
    main = [r for r in result.rows if "#" not in r["event_id"]]
    assert len(main) == 1, f"{len(main)} events for {rec.id}"
    [row] = main
    expected = rec.meta["expected"]
    columns = (*TOKEN_COLUMNS, "estimated")
    got = {name: row[name] for name in columns}
    split = _by_model(rec)
    if split:  # Groq compound: the call's own event has no tokens, its models' have them
        assert all(row[name] == 0 for name in TOKEN_COLUMNS)
        assert len(result.rows) == 1 + len(split)
        for name in TOKEN_COLUMNS:
            got[name] = sum(r[name] for r in result.rows)
        # The top-level usage itemises no reasoning; a sub-call's may (gpt-oss-120b's):
        # it is a share of output, which adds up to the call's.
        expected = {**expected, "reasoning_tokens": sum(m["reasoning_tokens"] for m in split)}
    # The corpus's figures predate audio counted apart: its input and output hold audio,
    # its cache reads the cached audio.
    got["input_tokens"] += row["audio_input_tokens"]
    got["output_tokens"] += row["audio_output_tokens"]
    got["cached_input_tokens"] += row["cached_audio_input_tokens"]
    assert got == {name: expected[name] for name in columns}
    audio = ("audio_input_tokens", "cached_audio_input_tokens", "audio_output_tokens")
    assert tuple(row[name] for name in audio) == _reported_audio(rec)
    assert row["model"] == normalise_model(rec.flavor, expected["model"])
    if rec.flavor == "gemini":  # one name per model: "models/gemini-2.5-pro" is stored bare
        assert "/" not in row["model"]
    assert row["response_id"] == rec.meta["response_id"]
    assert row["status"] == rec.meta["response"]["status"]
    assert (row["provider"], row["flavor"], row["consumer"]) == (rec.provider, rec.flavor, "alice")
    assert row["request_id"] == result.request_id and row["event_id"].startswith("ml:")


@pytest.mark.parametrize("rec", RECORDINGS, ids=[r.id for r in RECORDINGS])
def test_client_gets_the_providers_bytes(rec: Recording, replayed: dict[str, Replayed]) -> None:
    result = replayed[rec.id]
    if result.forwarded == rec.request_body:
        assert result.received == rec.body
        return
    # The proxy added stream_options.include_usage: it hides the usage-only chunk it
    # asked for, so the client gets every other event unchanged.
    assert json.loads(result.forwarded)["stream_options"]["include_usage"] is True
    kept = [e for e in rec.body.split(b"\n\n") if b'"choices":[]' not in e.replace(b" ", b"")]
    assert result.received == b"\n\n".join(kept)


def _main_and_beside(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A call's own event, and the events billed beside it (``<event_id>#<n>``) in order."""
    [main] = [r for r in rows if "#" not in r["event_id"]]
    return main, sorted((r for r in rows if "#" in r["event_id"]), key=lambda r: r["event_id"])


SPLIT = [r for r in RECORDINGS if _by_model(r)]


@pytest.mark.parametrize("rec", SPLIT, ids=[r.id for r in SPLIT])
def test_compound_calls_get_an_event_per_underlying_model(
    rec: Recording, replayed: dict[str, Replayed]
) -> None:
    main, beside = _main_and_beside(replayed[rec.id].rows)
    want = [
        {"event_id": f"{main['event_id']}#{i}", **model, "web_search_calls": 0,
         "estimated": False, "response_id": main["response_id"], "status": main["status"]}
        for i, model in enumerate(_by_model(rec))
    ]  # fmt: skip
    assert [{k: row[k] for k in want[0]} for row in beside] == want


def test_the_corpus_has_compound_calls_split_and_kept() -> None:
    """Both cases are exercised: JSON breakdowns that add up, a stream's that does not."""
    groq = [r for r in RECORDINGS if (_compound_report(r) or {}).get("usage_breakdown")]
    if not groq:
        pytest.skip("no corpus")
    assert {r.name for r in SPLIT} == {"chat-compound-web-search", "chat-compound-domain-filters"}
    assert "chat-sse-compound-web-search" in {r.name for r in groq if r not in SPLIT}


BESIDE = [r for r in RECORDINGS if _beside(r)]


@pytest.mark.parametrize("rec", BESIDE, ids=[r.id for r in BESIDE])
def test_usage_iterations_beside_the_call_get_events(
    rec: Recording, replayed: dict[str, Replayed]
) -> None:
    main, beside = _main_and_beside(replayed[rec.id].rows)
    want = [
        {
            "event_id": f"{main['event_id']}#{i}",
            "model": it.get("model", main["model"]),
            "input_tokens": it["input_tokens"],
            "cached_input_tokens": it.get("cache_read_input_tokens") or 0,
            "cache_write_tokens": it.get("cache_creation_input_tokens") or 0,
            "output_tokens": it["output_tokens"],
            "estimated": False,
            "response_id": main["response_id"],
        }
        for i, it in enumerate(_beside(rec))
    ]
    assert [{k: row[k] for k in want[0]} for row in beside] == want
