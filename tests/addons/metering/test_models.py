"""One stored model name per provider model (addons/metering/models.py)."""

from __future__ import annotations

import pytest

from addons.metering.models import normalise_model


@pytest.mark.parametrize(
    ("flavor", "raw", "stored"),
    [
        ("gemini", "models/gemini-2.5-pro", "gemini-2.5-pro"),
        ("gemini", "gemini-2.5-pro", "gemini-2.5-pro"),
        ("gemini", "tunedModels/my-tuned-1", "my-tuned-1"),
        ("gemini", "publishers/google/models/gemini-2.5-flash", "gemini-2.5-flash"),
        (
            "gemini",
            "projects/p1/locations/us-central1/publishers/google/models/gemini-2.0-flash",
            "gemini-2.0-flash",
        ),
        ("gemini", " models/gemini-3-pro-preview ", "gemini-3-pro-preview"),
        ("openai", "gpt-4o-2024-08-06", "gpt-4o-2024-08-06"),
        ("openai", "openai/gpt-5-mini", "openai/gpt-5-mini"),
        ("openai", "groq/compound", "groq/compound"),
        ("openai", "models/not-gemini", "models/not-gemini"),
        ("anthropic", "claude-sonnet-4-6", "claude-sonnet-4-6"),
        ("openai", "  ", None),
        ("gemini", None, None),
    ],
)
def test_normalise_model(flavor: str, raw: str | None, stored: str | None) -> None:
    assert normalise_model(flavor, raw) == stored
