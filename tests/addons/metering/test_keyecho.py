"""Masking an injected key in a stream cut anywhere (the end-to-end cases are in
tests/e2e/test_proxy_key_echo.py)."""

from __future__ import annotations

import pytest

from addons.metering.keyecho import StreamScrub, mask_text, masked

KEY = b"sk-real-openai-provider-key"
BODY = b'data: {"error": {"message": "Incorrect API key provided: ' + KEY + b'"}}\n\nss' + KEY


def test_masked_keeps_the_length_and_shows_only_the_ends() -> None:
    assert masked(KEY) == b"sk-" + b"*" * 20 + b"-key"
    assert masked(b"short-key") == b"*" * 9


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13, 26, 27, 28, 64])
def test_a_key_cut_across_chunks_is_masked(size: int) -> None:
    scrub = StreamScrub(KEY)
    out = [scrub.feed(BODY[i : i + size]) for i in range(0, len(BODY), size)]
    sent = b"".join(out) + scrub.flush()
    assert sent == BODY.replace(KEY, masked(KEY))
    assert all(KEY not in chunk for chunk in out)


def test_an_event_end_is_not_held_back() -> None:
    scrub = StreamScrub(KEY)
    assert scrub.feed(b"data: {}\n\n") == b"data: {}\n\n"
    assert scrub.feed(b"data: s") == b"data: "  # maybe the key's start: held back
    assert scrub.feed(b"o\n\n") == b"so\n\n"  # it was not


def test_mask_text() -> None:
    assert mask_text(f"bad key {KEY.decode()}", KEY) == f"bad key {masked(KEY).decode()}"
    assert mask_text("no key here", KEY) == "no key here"
    assert mask_text(KEY.decode(), None) == KEY.decode()
