from __future__ import annotations

from addons.metering import bounded, estimate
from addons.metering.bounded import OverLimit, count_tokens, decode_budget


class _Extractor:
    problems = ["earlier"]

    def output_text(self) -> str:
        return "seen so far"


def test_count_tokens_is_exact_when_short_and_scaled_when_long() -> None:
    assert count_tokens("hello world", "gpt-4o") == estimate.count_tokens("hello world", "gpt-4o")
    text = "word " * bounded.MAX_COUNTED_CHARS  # 5x the limit
    head = estimate.count_tokens(text[: bounded.MAX_COUNTED_CHARS], "gpt-4o")
    assert count_tokens(text, "gpt-4o") == 5 * head


def test_huge_request_is_not_parsed() -> None:
    body = b'{"model":"gpt-4o","messages":[{"role":"user","content":"' + b"a " * 100_000 + b'"}]}'
    assert len(body) > bounded.MAX_PARSED_REQUEST
    assert bounded.estimate_request_input("openai", body) > 0


def test_budget_and_over_limit() -> None:
    assert decode_budget(False, 10**6) == bounded.MAX_METERED_BODY
    assert decode_budget(True, 10**6) == bounded.MAX_METERED_BODY + 64 * 10**6
    over = OverLimit(_Extractor(), "too big", keep_text=True)  # type: ignore[arg-type]
    over.feed(b"ignored")
    assert over.finish() is None and over.problems == ["earlier", "too big"]
    assert over.output_text() == "seen so far"
    assert OverLimit(_Extractor(), "x", keep_text=False).output_text() == ""  # type: ignore[arg-type]
