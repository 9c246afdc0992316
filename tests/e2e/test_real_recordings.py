"""Conformance: every real provider response in ``../shared/real-recordings`` is metered
exactly, through a real ``mitmdump`` with the addon.

Each recording's body is served by a replay upstream (:mod:`tests.support.replay`) as the
provider served it (JSON or SSE, gzip where it was, ``Content-Length`` or chunked); the
request named in its ``.meta.json`` goes through the proxy (HTTPS, CONNECT) with a
consumer's key; the
stored event must equal the recording's ``expected`` figures (the model normalised, see
``addons/metering/models.py``), carry the provider's response id and status, and the
client must get the provider's bytes. Anthropic's ``usage.iterations`` other than
``message`` must each give an event of their own.

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
    expected_rows = sum(1 + len(_beside(rec)) for rec in RECORDINGS)
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


BESIDE = [r for r in RECORDINGS if _beside(r)]


@pytest.mark.parametrize("rec", BESIDE, ids=[r.id for r in BESIDE])
def test_usage_iterations_beside_the_call_get_events(
    rec: Recording, replayed: dict[str, Replayed]
) -> None:
    result = replayed[rec.id]
    [main] = [r for r in result.rows if "#" not in r["event_id"]]
    beside = sorted((r for r in result.rows if "#" in r["event_id"]), key=lambda r: r["event_id"])
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
