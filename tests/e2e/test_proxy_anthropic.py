"""The official Anthropic SDK through the real proxy: bytes unchanged, usage exact."""

from __future__ import annotations

import pytest

from tests.conftest import KEYS
from tests.support.clients import Clients
from tests.support.proxy import MeterProxy, row_usage
from tests.support.upstream import FakeProvider

MESSAGES = [{"role": "user", "content": "Hello, Claude"}]


@pytest.mark.parametrize("tls", [True, False], ids=["https", "http"])
def test_messages_json(
    clients: Clients, meter_proxy: MeterProxy, fake_provider: FakeProvider, tls: bool
) -> None:
    client = clients.anthropic(KEYS["bob"], tls=tls)
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=100, messages=MESSAGES
    )
    message = raw.parse()
    ex = fake_provider.last()
    assert raw.http_response.content == bytes(ex.sent)
    assert message.id == ex.response_id
    assert message.content[0].text == ex.text  # type: ignore[union-attr]
    [row] = meter_proxy.wait_for_events([ex.request_id])
    assert ex.usage is not None and row_usage(row) == ex.usage
    assert row["response_id"] == ex.response_id
    assert (row["consumer"], row["flavor"], row["model"]) == (
        "bob",
        "anthropic",
        "claude-sonnet-4-6",
    )
    assert not row["streamed"] and not row["estimated"]


def test_messages_stream_bytes(
    clients: Clients, meter_proxy: MeterProxy, fake_provider: FakeProvider
) -> None:
    client = clients.anthropic(KEYS["bob"])
    with client.messages.with_streaming_response.create(
        model="claude-sonnet-4-6", max_tokens=100, messages=MESSAGES, stream=True
    ) as resp:
        received = b"".join(resp.iter_bytes())
    ex = fake_provider.last()
    assert received == bytes(ex.sent)
    [row] = meter_proxy.wait_for_events([ex.request_id])
    assert ex.usage is not None and row_usage(row) == ex.usage
    assert row["streamed"] and not row["estimated"]
    assert row["ttft_ms"] is not None and row["latency_ms"] >= row["ttft_ms"]


def test_messages_stream_sdk_helper(
    clients: Clients, meter_proxy: MeterProxy, fake_provider: FakeProvider
) -> None:
    client = clients.anthropic(KEYS["bob"], tls=False)
    with client.messages.stream(
        model="claude-haiku-4-5", max_tokens=100, messages=MESSAGES
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    ex = fake_provider.last()
    assert text == ex.text
    assert ex.usage is not None
    assert final.usage.output_tokens == ex.usage["output"]
    [row] = meter_proxy.wait_for_events([ex.request_id])
    assert row_usage(row) == ex.usage
