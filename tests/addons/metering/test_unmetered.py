"""The one-line notice for calls a provider bills that the proxy does not meter."""

from __future__ import annotations

import logging

import pytest

from addons.metering.providers import MeteredProvider
from addons.metering.unmetered import UnmeteredLog, billed_kind


@pytest.mark.parametrize(
    "flavor,method,path,kind",
    [
        ("openai", "POST", "/v1/audio/transcriptions", "audio"),
        ("openai", "POST", "/openai/deployments/whisper/audio/translations?api-version=1", "audio"),
        ("openai", "POST", "/v1/audio/speech", "audio"),
        ("openai", "POST", "/v1/images/generations", "images"),
        ("openai", "GET", "/v1/realtime?model=gpt-realtime", None),  # a WebSocket: metered
        ("openai", "POST", "/v1/realtime/calls", "Realtime calls"),  # WebRTC: not
        ("openai", "POST", "/v1/batches", "batch jobs"),
        ("openai", "GET", "/v1/batches", None),  # a listing
        ("openai", "GET", "/v1/models", None),
        ("openai", "POST", "/v1/files", None),
        ("anthropic", "POST", "/v1/messages/batches", "message batches"),
        ("anthropic", "POST", "/v1/messages/count_tokens", None),
        ("gemini", "POST", "/v1beta/models/gemini-embedding-001:embedContent?key=k", "embeddings"),
        ("gemini", "POST", "/v1beta/models/e:batchEmbedContents", "embeddings"),
        ("gemini", "POST", "/v1beta/models/g:batchGenerateContent", "batch jobs"),
        ("gemini", "POST", "/v1beta/models/g:countTokens", None),
        ("openai", "POST", "/v1/videos/video_1/remix", "videos"),
        ("openai", "POST", "/v1/fine_tuning/jobs", "fine-tuning"),
        ("gemini", "POST", "/v1beta/cachedContents", "context cache storage"),
        ("openai", "POST", "/v1/conversations", None),  # OpenAI's: stored items, free
    ],
)
def test_billed_kind(flavor: str, method: str, path: str, kind: str | None) -> None:
    assert billed_kind(flavor, method, path) == kind


@pytest.mark.parametrize(
    "method,path,kind",
    [
        ("POST", "/v1/conversations", "conversations"),
        ("POST", "/v1/conversations/conv_1", "conversations"),  # appended to
        ("POST", "/v1/conversations/conv_1/restart", "conversations"),
        ("GET", "/v1/conversations/conv_1", None),
    ],
)
def test_mistral_conversations_run_the_model(method: str, path: str, kind: str | None) -> None:
    assert billed_kind("openai", method, path, "mistral") == kind


def test_logged_once_per_provider_and_kind_without_the_query(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("test.unmetered")
    notes = UnmeteredLog(log)
    openai = MeteredProvider("openai", "openai", "bearer")
    azure = MeteredProvider("azure-openai", "openai", "api-key")
    with caplog.at_level(logging.WARNING, "test.unmetered"):
        for _ in range(3):
            notes.note(openai, "POST", "/v1/audio/speech?key=sk-secret")
            notes.note(openai, "POST", "/v1/audio/transcriptions")
            notes.note(openai, "GET", "/v1/models")
        notes.note(azure, "POST", "/openai/v1/audio/speech")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("meterline: openai POST /v1/audio/speech is billed by the")
    assert "docs/proxy.md" in lines[0] and "sk-secret" not in lines[0]
    assert lines[1].startswith("meterline: azure-openai POST /openai/v1/audio/speech")
