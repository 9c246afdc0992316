from __future__ import annotations

from addons.metering.replyend import EndWatch


def test_content_length_completes_on_the_last_byte() -> None:
    w = EndWatch("10", done_event=False)
    assert not w.completes(b"12345")
    assert w.completes(b"67890")


def test_done_event_only_at_a_line_start() -> None:
    w = EndWatch(None, done_event=True)
    assert not w.completes(b'data: {"content":"data: [DONE]"}\n\n')
    assert w.completes(b'data: {"x":1}\n\ndata: [DONE]\n\n')
    assert w.completes(b"data:[DONE]\n\n")
    assert not EndWatch(None, done_event=False).completes(b"data: [DONE]\n\n")
    assert not EndWatch("x", done_event=False).completes(b"data")
