from __future__ import annotations

from addons.metering import bounded, estimate
from addons.metering.bounded import OverLimit, count_tokens, decode_budget
from addons.metering.extract import new_extractor
from addons.metering.usage import UsageExtractor


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
    assert decode_budget(True, 10**6) == bounded.MAX_METERED_BODY + 64 * 10**6
    assert decode_budget(False, 10**6) == bounded.MAX_METERED_BODY + 16 * 10**6
    over = OverLimit(_Extractor(), "too big", keep_text=True)  # type: ignore[arg-type]
    over.feed(b"ignored")
    assert over.finish() is None and over.problems == ["earlier", "too big; usage estimated"]
    assert over.output_text() == "seen so far"
    assert OverLimit(_Extractor(), "x", keep_text=False).output_text() == ""  # type: ignore[arg-type]


def _json(flavor: str, path: str) -> UsageExtractor:
    return new_extractor(flavor, path=path, content_type="application/json")


def test_a_body_over_the_limit_is_read_from_its_end() -> None:
    """A 17 MB embeddings answer (base64, the SDK's default): the usage after the data is
    the provider's figure; before, the flow was estimated (+4.9% on a real-sized one)."""
    body = (
        b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":"'
        + b"A" * (17 * 1024 * 1024)
        + b'"}],"model":"text-embedding-3-small","usage":{"prompt_tokens":87993,'
        b'"total_tokens":87993}}'
    )
    over = OverLimit(
        _json("openai", "/v1/embeddings"),
        "body over",
        keep_text=False,
        reread=lambda: _json("openai", "/v1/embeddings"),
    )
    for i in range(0, len(body), 65536):
        over.feed(body[i : i + 65536])
    usage = over.finish()
    assert usage is not None and (usage.input, usage.output) == (87993, 0)
    assert over.seen().model == "text-embedding-3-small" and over.problems == []


def test_a_body_whose_end_holds_no_usage_is_estimated() -> None:
    over = OverLimit(
        _json("gemini", "/v1beta/models/g:generateContent"),
        "body over",
        keep_text=False,
        reread=lambda: _json("gemini", "/v1beta/models/g:generateContent"),
    )
    over.feed(b'{"candidates":[{"content":{"parts":[{"text":"' + b"x" * 100_000 + b'"}]}}]}')
    assert over.finish() is None
    assert over.problems == ["body over, no usage at its end; usage estimated"]
    over.give_up("a bomb")  # nothing kept any more: said once
    assert len(over.problems) == 1
