"""Anthropic server-side web searches through a real ``mitmdump`` and the official SDK:
the stream's cumulative ``server_tool_use.web_search_requests`` (in ``message_start`` as
0, in ``message_delta`` as the call's total) is stored once in ``web_search_calls``."""

from __future__ import annotations

import pytest

from tests.conftest import KEYS
from tests.support.clients import Clients
from tests.support.proxy import MeterProxy, row_usage
from tests.support.upstream import FakeProvider

MESSAGES = [{"role": "user", "content": "What is in the news today?"}]
TOOLS = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
def test_anthropic_web_searches_are_stored_once(
    clients: Clients, meter_proxy: MeterProxy, fake_provider: FakeProvider, stream: bool
) -> None:
    client = clients.anthropic(KEYS["bob"])
    kwargs = {"model": "claude-sonnet-4-6", "max_tokens": 100, "messages": MESSAGES,
              "tools": TOOLS}  # fmt: skip
    if stream:
        with client.messages.stream(**kwargs) as s:  # type: ignore[arg-type]
            final = s.get_final_message()
    else:
        final = client.messages.create(**kwargs)  # type: ignore[arg-type]
    ex = fake_provider.last()
    assert final.usage.server_tool_use is not None
    assert final.usage.server_tool_use.web_search_requests == 3  # what the client was told
    [row] = meter_proxy.wait_for_events([ex.request_id])
    assert ex.usage is not None and ex.usage["web_search"] == 3
    assert row_usage(row) == ex.usage
    assert row["web_search_calls"] == 3 and not row["estimated"]
