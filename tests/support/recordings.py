"""The conformance corpus: real provider responses in ``../shared/real-recordings``.

Read where it lies, beside the repository (as in CI), never copied into it: the bodies
are other projects' data. Each ``<provider>/<name>.meta.json`` says what request to send
(``request``), how to serve the body (``response``: status, content type and encoding,
``content-length`` or ``chunked``), the provider's usage fields verbatim
(``provider_usage``) and the token counts the README's token model gives (``expected``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "real-recordings"
PROVIDERS = (
    "anthropic",
    "azure-openai",
    "deepseek",
    "gemini",
    "groq",
    "mistral",
    "openai",
    "openrouter",
    "xai",
)


@dataclass(frozen=True)
class Recording:
    provider: str
    name: str
    meta: dict[str, Any]
    directory: Path

    @property
    def id(self) -> str:
        return f"{self.provider}/{self.name}"

    @property
    def flavor(self) -> str:
        return str(self.meta["flavor"])

    @property
    def body(self) -> bytes:
        """The body exactly as the provider sent it (content-encoded when it was)."""
        return (self.directory / self.meta["response"]["body_file"]).read_bytes()

    @property
    def path_and_query(self) -> str:
        req = self.meta["request"]
        return req["path"] + (f"?{req['query']}" if req.get("query") else "")

    @property
    def request_body(self) -> bytes:
        return json.dumps(self.meta["request"]["body"]).encode()


def corpus_missing_reason() -> str | None:
    """Why the corpus cannot be used here, or ``None`` when it can."""
    if not CORPUS.is_dir():
        return f"conformance corpus not found at {CORPUS}"
    return None


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def recording(name: str) -> tuple[dict[str, Any], bytes]:
    """One recording's meta and body (``"openai/chat-gpt-4o-audio-input"``), read from
    ``../shared`` at test time (never copied here); skipped where the corpus is absent,
    a failure in CI."""
    reason = corpus_missing_reason()
    if reason is not None:
        if in_ci():
            pytest.fail(f"{reason}: CI must run the conformance corpus")
        pytest.skip(reason)
    meta = json.loads((CORPUS / f"{name}.meta.json").read_text())
    return meta, (CORPUS / name.split("/")[0] / meta["response"]["body_file"]).read_bytes()


def load_recordings(root: Path = CORPUS) -> list[Recording]:
    """Every recording, sorted by provider then name (stable parametrize ids)."""
    found = []
    for meta_path in sorted(root.glob("*/*.meta.json")):
        meta = json.loads(meta_path.read_text())
        name = meta_path.name.removesuffix(".meta.json")
        found.append(Recording(meta_path.parent.name, name, meta, meta_path.parent))
    return found
