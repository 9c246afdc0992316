"""Which figures a finished call is metered with (addons/metering/settle.py)."""

from __future__ import annotations

import pytest

from addons.metering.settle import OnceLog, settle
from addons.metering.usage import Seen, Usage

NOTHING_SEEN = Seen()


def run(
    reported: Usage | None,
    *,
    cut: bool = False,
    status: int = 200,
    seen: Seen = NOTHING_SEEN,
    flavor: str = "openai",
    output_count: int = 7,
) -> tuple[Usage, int | None, str | None]:
    calls: list[str] = []

    def estimate_input(model: str | None) -> int:
        calls.append("input")
        return 50

    def count_output(model: str | None) -> int:
        calls.append("output")
        return output_count

    s = settle(
        flavor,
        reported,
        seen,
        status_code=status,
        cut=cut,
        request_model=lambda: "request-model",
        estimate_input=estimate_input,
        count_output=count_output,
    )
    if not s.usage.estimated:
        assert calls == [], "a final report is never recounted"
    return s.usage, s.status, s.why_estimated


FINAL = Usage(input=10, cached_input=2, output=5, reasoning=1, model="m", response_id="r")


@pytest.mark.parametrize("cut", [False, True], ids=["ended", "cut-after-final-usage"])
def test_the_final_report_wins_even_when_the_connection_was_cut(cut: bool) -> None:
    usage, status, why = run(FINAL, cut=cut)
    assert (usage.input, usage.cached_input, usage.output, usage.reasoning) == (10, 2, 5, 1)
    assert (usage.estimated, status, why) == (False, 200, None)


def test_final_report_is_not_raised_by_a_larger_local_count() -> None:
    usage, _, _ = run(FINAL, output_count=999)
    assert usage.output == 5 and not usage.estimated


@pytest.mark.parametrize("cut", [False, True], ids=["ended-without-final", "cut"])
def test_partial_report_keeps_input_and_is_flagged(cut: bool) -> None:
    partial = Usage(input=100, cache_write=20, output=1, model="claude-x", partial=True)
    usage, status, why = run(partial, cut=cut, flavor="anthropic", output_count=0)
    assert (usage.input, usage.cache_write, usage.output) == (100, 20, 1)
    assert usage.estimated and why is not None
    assert status == (None if cut else 200)
    usage, _, _ = run(partial, cut=cut, flavor="anthropic", output_count=30)
    assert usage.output == 30


def test_nothing_reported_keeps_the_id_and_model_seen() -> None:
    usage, status, why = run(None, cut=True, seen=Seen("gpt-4o-2024", "chatcmpl-9"))
    assert (usage.input, usage.output, usage.estimated) == (50, 7, True)
    assert (usage.model, usage.response_id, status) == ("gpt-4o-2024", "chatcmpl-9", None)
    assert why == "cut before any usage"


def test_model_from_request_when_nothing_seen() -> None:
    usage, _, _ = run(None)
    assert usage.model == "request-model" and usage.response_id is None


def test_invalid_counts_are_estimated_and_flagged() -> None:
    bad = Usage(input=10, output=0, model="m", response_id="r", invalid="output_tokens=-70")
    usage, status, why = run(bad)
    assert (usage.input, usage.output, usage.estimated, status) == (50, 7, True, 200)
    assert usage.response_id == "r" and why == "output_tokens=-70"


def test_error_without_usage_bills_nothing() -> None:
    usage, status, _ = run(None, status=429, seen=Seen("m", None))
    assert (usage.total, usage.estimated, status, usage.model) == (0, False, 429, "m")


@pytest.mark.parametrize("status", [101, 204, 205, 304])
def test_a_status_that_carries_no_answer_bills_nothing(status: int) -> None:
    """A WebSocket upgrade, no content, not modified: no answer, so no estimate (an
    empty 204 was billed 7 estimated input tokens in a probe)."""
    usage, got, _ = run(None, status=status)
    assert (usage.total, usage.estimated, got) == (0, False, status)
    usage, _, _ = run(None, status=200)  # an empty 200 may have billed: still estimated
    assert usage.estimated and usage.total > 0


def test_error_with_invalid_usage_bills_nothing_but_is_flagged() -> None:
    usage, status, _ = run(Usage(invalid="x=-1"), status=500)
    assert (usage.total, usage.estimated, status) == (0, True, 500)


def test_error_with_usage_bills_what_the_provider_reported() -> None:
    usage, status, _ = run(Usage(input=12, output=0), status=400)
    assert (usage.input, status, usage.estimated) == (12, 400, False)


def test_model_is_normalised_and_beside_usage_inherits_it() -> None:
    main = Usage(input=1, output=1, model="models/gemini-2.5-pro")
    main.extra = [Usage(input=3, model=None)]
    usage, _, _ = run(main, flavor="gemini")
    assert usage.model == "gemini-2.5-pro" and usage.extra[0].model == "gemini-2.5-pro"


def test_once_log_masks_numbers_and_is_per_provider() -> None:
    once = OnceLog()
    assert once.first("groq", "completion_tokens=-70")
    assert not once.first("groq", "completion_tokens=-3")
    assert once.first("xai", "completion_tokens=-3")
    assert once.first("groq", "prompt_tokens='12'")


def test_a_report_that_is_not_final_keeps_its_audio_figures() -> None:
    """A cut stream's partial report: its audio (priced at the audio rate) is kept, and
    only the text output is raised to the local count."""
    partial = Usage(input=20, audio_input=44, output=1, audio_output=30, partial=True)
    usage, _, why = run(partial, cut=True, output_count=7)
    assert (usage.input, usage.audio_input, usage.output, usage.audio_output) == (20, 44, 7, 30)
    assert usage.estimated and why == "cut before the provider's final usage"
