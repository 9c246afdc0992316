"""Audio calls through a real ``mitmdump``: the audio share of the prompt and of the
answer is stored apart (``audio_input_tokens``, ``audio_output_tokens``), JSON and
streamed, OpenAI chat completions (official SDK) and Gemini (raw HTTP)."""

from __future__ import annotations

import pytest

from tests.conftest import KEYS
from tests.support.clients import Clients
from tests.support.proxy import MeterProxy, row_usage
from tests.support.upstream import FakeProvider

AUDIO_PART = {"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZF", "format": "wav"}}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_openai_audio_in_and_out_is_stored_apart(
    clients: Clients, meter_proxy: MeterProxy, fake_provider: FakeProvider, stream: bool
) -> None:
    client = clients.openai(KEYS["alice"])
    messages = [{"role": "user", "content": [{"type": "text", "text": "Who?"}, AUDIO_PART]}]
    kwargs = {"model": "gpt-4o-audio-preview", "modalities": ["text", "audio"],
              "audio": {"voice": "alloy", "format": "wav"}, "messages": messages}  # fmt: skip
    if stream:
        for _ in client.chat.completions.create(stream=True, **kwargs):  # type: ignore[call-overload]
            pass
    else:
        client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    ex = fake_provider.last()
    [row] = meter_proxy.wait_for_events([ex.request_id])
    assert ex.usage is not None and ex.usage["audio_input"] > 0 and ex.usage["audio_output"] > 0
    assert row_usage(row) == ex.usage


@pytest.mark.parametrize("method", ["generateContent", "streamGenerateContent?alt=sse"])
def test_gemini_audio_in_and_out_is_stored_apart(
    clients: Clients, meter_proxy: MeterProxy, fake_provider: FakeProvider, method: str
) -> None:
    body = {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "Say what you hear."},
                    {"inlineData": {"mimeType": "audio/mp3", "data": "SUQzBAAAAAAA"}},
                ],
            }
        ],
        "generationConfig": {"responseModalities": ["AUDIO"]},
    }
    url = fake_provider.base_url("gemini", tls=True) + f"/v1beta/models/gemini-2.5-flash:{method}"
    with clients.raw().stream(
        "POST", url, json=body, headers={"x-goog-api-key": KEYS["alice"]}
    ) as resp:
        resp.read()
    ex = fake_provider.last()
    [row] = meter_proxy.wait_for_events([ex.request_id])
    assert ex.usage is not None and ex.usage["audio_input"] > 0 and ex.usage["audio_output"] > 0
    assert row_usage(row) == ex.usage
