"""The official OpenAI SDK through the real proxy: bytes unchanged, usage in DuckDB exact."""

from __future__ import annotations

import json
import socket

import pytest

from tests.conftest import KEYS, ProxyFactory
from tests.support.clients import Clients
from tests.support.proxy import MeterProxy, row_usage
from tests.support.upstream import FakeProvider

MESSAGES = [{"role": "user", "content": "Say something about metering."}]


@pytest.mark.parametrize("tls", [True, False], ids=["https", "http"])
def test_chat_json(
    clients: Clients, meter_proxy: MeterProxy, fake_provider: FakeProvider, tls: bool
) -> None:
    client = clients.openai(KEYS["alice"], tls=tls)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    completion = raw.parse()
    ex = fake_provider.last()

    assert raw.http_response.content == bytes(ex.sent)
    assert completion.id == ex.response_id
    assert completion.choices[0].message.content == ex.text
    [row] = meter_proxy.wait_for_events([ex.request_id])
    assert ex.usage is not None and row_usage(row) == ex.usage
    assert row["response_id"] == ex.response_id
    assert row["consumer"] == "alice"
    assert row["key_fingerprint"].startswith("sha256:")
    assert KEYS["alice"] not in str(row)
    assert (row["model"], row["status"], row["streamed"], row["estimated"]) == (
        "gpt-4o",
        200,
        False,
        False,
    )
    assert row["latency_ms"] >= row["ttft_ms"] >= 0
    assert row["proxy_id"] == "test-proxy"


def test_chat_stream_include_usage_added_and_hidden(
    clients: Clients, meter_proxy: MeterProxy, fake_provider: FakeProvider
) -> None:
    """The client did not ask for usage: the proxy asks, meters it, and drops the chunk."""
    client = clients.openai(KEYS["alice"], tls=False)
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    ) as resp:
        received = b"".join(resp.iter_bytes())
    ex = fake_provider.last()

    assert ex.json["stream_options"] == {"include_usage": True}
    assert ex.headers["accept-encoding"] == "identity"
    assert ex.usage_part is not None
    expected = b"".join(p for i, p in enumerate(ex.parts) if i != ex.usage_part)
    assert received == expected
    assert b'"usage": {' not in received
    [row] = meter_proxy.wait_for_events([ex.request_id])
    assert ex.usage is not None and row_usage(row) == ex.usage
    assert row["streamed"] and not row["estimated"]


def test_a_stream_sent_with_a_length_still_ends_when_its_usage_chunk_is_hidden(
    clients: Clients, meter_proxy: MeterProxy, fake_provider: FakeProvider
) -> None:
    """A buffering gateway sends the stream with ``Content-Length``: hiding the usage
    chunk made the body shorter than announced, and the client waited for the rest
    until its timeout. The proxy now sends it chunked."""
    client = clients.openai(KEYS["alice"], tls=False).with_options(timeout=10)
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        extra_headers={"x-fake": "sized"},
    ) as resp:
        received = b"".join(resp.iter_bytes())
        headers = resp.headers
    ex = fake_provider.last()
    assert "content-length" not in headers and headers["transfer-encoding"] == "chunked"
    assert ex.usage_part is not None
    assert received == b"".join(p for i, p in enumerate(ex.parts) if i != ex.usage_part)
    [row] = meter_proxy.wait_for_events([ex.request_id])
    assert ex.usage is not None and row_usage(row) == ex.usage


def test_chat_stream_sdk_sees_text(
    clients: Clients, meter_proxy: MeterProxy, fake_provider: FakeProvider
) -> None:
    client = clients.openai(KEYS["alice"])
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    ex = fake_provider.last()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ex.text
    assert all(c.usage is None for c in chunks)  # the injected usage chunk never arrives
    [row] = meter_proxy.wait_for_events([ex.request_id])
    assert ex.usage is not None and row_usage(row) == ex.usage


def test_a_client_gone_after_openrouters_usage_chunk_is_metered_exact(
    clients: Clients, meter_proxy: MeterProxy, fake_provider: FakeProvider
) -> None:
    """OpenRouter's usage chunk repeats a choice with ``finish_reason: null`` after the
    ``finish_reason`` chunk. A client that stops reading there (it has its answer and
    usage) left before ``data: [DONE]``: the call was metered partial, estimated."""
    client = clients.openai(KEYS["alice"], tls=False)
    stream = client.chat.completions.create(
        model="x-ai/grok-4",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-fake": "usage-in-choice,hold-done"},
    )
    usage = next(c.usage for c in stream if c.usage is not None)
    stream.close()  # the fake sends [DONE] only to a client still there: never
    ex = fake_provider.last()
    assert not ex.complete and ex.usage is not None
    [row] = meter_proxy.wait_for_events([ex.request_id], timeout=15)
    assert row_usage(row) == ex.usage
    assert row["input_tokens"] + row["cached_input_tokens"] == usage.prompt_tokens
    assert (row["status"], row["estimated"]) == (200, False)


def test_chat_stream_client_asked_for_usage(
    clients: Clients, meter_proxy: MeterProxy, fake_provider: FakeProvider
) -> None:
    """A client that asked for usage gets the usage chunk, byte for byte."""
    client = clients.openai(KEYS["alice"])
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    ) as resp:
        received = b"".join(resp.iter_bytes())
    ex = fake_provider.last()
    assert received == bytes(ex.plain)
    assert ex.usage_part is not None
    assert b'"stream_options":{"include_usage":true}' in ex.body  # the body as sent
    # Only the encoding is asked for: a durable proxy must see "data: [DONE]" (replyend.py).
    assert ex.headers["accept-encoding"] == "identity"
    [row] = meter_proxy.wait_for_events([ex.request_id])
    assert ex.usage is not None and row_usage(row) == ex.usage


def test_include_usage_off_estimates(
    clients: Clients, start_proxy: ProxyFactory, fake_provider: FakeProvider
) -> None:
    """With meter_include_usage=false the stream reports no usage: tiktoken estimates it."""
    proxy = start_proxy(options={"meter_include_usage": False})
    client = clients.for_proxy(proxy).openai(KEYS["alice"])
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=MESSAGES, stream=True
    ) as resp:
        received = b"".join(resp.iter_bytes())
    ex = fake_provider.last()
    assert "stream_options" not in ex.json
    assert received == bytes(ex.plain)
    [row] = proxy.wait_for_events([ex.request_id])
    assert row["estimated"]
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0
    # no usage, but the id and model the chunks carried are kept
    assert (row["response_id"], row["model"]) == (ex.response_id, ex.model)
    assert row["response_id"] == ex.response_id


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_responses_api(
    clients: Clients, meter_proxy: MeterProxy, fake_provider: FakeProvider, stream: bool
) -> None:
    client = clients.openai(KEYS["alice"])
    if stream:
        with client.responses.with_streaming_response.create(
            model="o4-mini", input="Hello", stream=True
        ) as resp:
            received = b"".join(resp.iter_bytes())
    else:
        raw = client.responses.with_raw_response.create(model="o4-mini", input="Hello")
        received = raw.http_response.content
        assert raw.parse().output_text == fake_provider.last().text
    ex = fake_provider.last()
    assert received == bytes(ex.plain)
    [row] = meter_proxy.wait_for_events([ex.request_id])
    assert ex.usage is not None and row_usage(row) == ex.usage
    assert row["response_id"] == ex.response_id
    assert row["streamed"] is stream


def test_responses_stream_helper_of_the_official_sdk(
    clients: Clients, meter_proxy: MeterProxy, fake_provider: FakeProvider
) -> None:
    """``client.responses.stream()`` rebuilds the response from the documented events
    (the fake sent text deltas for an output item it never added: the helper raised)."""
    client = clients.openai(KEYS["alice"])
    with client.responses.stream(model="o4-mini", input="Hello") as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    ex = fake_provider.last()
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-3:] == [
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.id == ex.response_id and final.output_text == ex.text
    assert final.usage is not None and ex.usage is not None
    [row] = meter_proxy.wait_for_events([ex.request_id])
    assert row_usage(row) == ex.usage
    assert row["input_tokens"] + row["cached_input_tokens"] == final.usage.input_tokens
    assert row["output_tokens"] == final.usage.output_tokens
    assert (row["response_id"], row["streamed"], row["estimated"]) == (ex.response_id, True, False)


def test_embeddings(clients: Clients, meter_proxy: MeterProxy, fake_provider: FakeProvider) -> None:
    client = clients.openai(KEYS["alice"])
    result = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    ex = fake_provider.last()
    assert len(result.data) == 2
    [row] = meter_proxy.wait_for_events([ex.request_id])
    assert ex.usage is not None and row_usage(row) == ex.usage
    assert row["event_id"].startswith("ml:")  # embeddings carry no response id


def test_a_16_mb_embeddings_answer_is_metered_from_the_usage_after_it(
    clients: Clients, meter_proxy: MeterProxy, fake_provider: FakeProvider
) -> None:
    """2,048 inputs at 1,536 dimensions in base64 (the SDK's default) make a 16 MB
    answer: it was estimated (92,274 tokens against 87,993 reported, +4.9%)."""
    client = clients.openai(KEYS["alice"], tls=False)
    raw = client.embeddings.with_raw_response.create(
        model="text-embedding-3-small",
        input=["metering"] * 4,
        extra_headers={"x-fake": f"pad={17 * 1024 * 1024},prompt=87993"},
    )
    assert len(raw.http_response.content) > 17 * 1024 * 1024
    ex = fake_provider.last()
    [row] = meter_proxy.wait_for_events([ex.request_id], timeout=30)
    assert (row["input_tokens"], row["output_tokens"], row["estimated"]) == (87993, 0, False)
    assert row["model"] == "text-embedding-3-small"


def test_a_sized_stream_to_an_http_1_0_client_ends_at_close_not_in_chunks(
    meter_proxy: MeterProxy, fake_provider: FakeProvider
) -> None:
    """HTTP/1.0 has no chunked coding: the shortened stream was sent chunked, which an
    HTTP/1.0 client reads as part of the body. It now ends when the connection closes."""
    url = fake_provider.base_url("openai") + "/v1/chat/completions"
    host = url.split("/")[2]
    body = json.dumps({"model": "gpt-4o", "messages": MESSAGES, "stream": True}).encode()
    head = (
        f"POST {url} HTTP/1.0\r\nHost: {host}\r\nAuthorization: Bearer {KEYS['alice']}\r\n"
        f"Content-Type: application/json\r\nx-fake: sized\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    proxy_host, proxy_port = meter_proxy.url.split("//")[1].split(":")
    with socket.create_connection((proxy_host, int(proxy_port)), timeout=20) as conn:
        conn.sendall(head.encode() + body)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    headers, _, sent = received.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in headers.lower()
    ex = fake_provider.last()
    assert ex.usage_part is not None
    assert sent == b"".join(p for i, p in enumerate(ex.parts) if i != ex.usage_part)
