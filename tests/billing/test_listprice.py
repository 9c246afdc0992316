"""List-price cost from the bundled genai-prices table: token mapping, Decimal, offline."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from genai_prices.types import TieredPrices, Usage

from billing.listprice import find_model, has_context_tiers, list_cost

AT = datetime(2026, 3, 1, tzinfo=UTC)
MTOK = Decimal(1_000_000)
ROOT = Path(__file__).resolve().parents[2]


def base(price: Decimal | TieredPrices | None) -> Decimal:
    assert price is not None
    return price.base if isinstance(price, TieredPrices) else price


def listed(provider: str, model: str) -> dict[str, Decimal | TieredPrices | None]:
    found = find_model(provider, model)
    assert found is not None
    prices = found[1].get_prices(AT)
    return {
        k: getattr(prices, k)
        for k in ("input_mtok", "cache_read_mtok", "cache_write_mtok", "output_mtok")
    }


def test_openai_cached_input_is_priced_apart_and_cache_writes_as_input() -> None:
    """OpenAI lists no cache-write price: written tokens cost what plain input costs."""
    p = listed("openai", "gpt-4o")
    assert p["cache_write_mtok"] is None
    tokens = {"input": 1_200_000, "cached_input": 300_000, "cache_write": 50_000, "output": 400_000}
    expected = (
        (1_200_000 + 50_000) * base(p["input_mtok"])
        + 300_000 * base(p["cache_read_mtok"])
        + 400_000 * base(p["output_mtok"])
    ) / MTOK
    cost = list_cost("openai", "gpt-4o-2024-08-06", **tokens, at=AT)
    assert isinstance(cost, Decimal)
    assert cost == expected


def test_anthropic_maps_each_token_type_to_its_own_price() -> None:
    """Below the 200k context tier: input uncached, cache reads and writes, output."""
    p = listed("anthropic", "claude-sonnet-4-5")
    tokens = {"input": 20_000, "cached_input": 100_000, "cache_write": 30_000, "output": 5_000}
    expected = (
        20_000 * base(p["input_mtok"])
        + 100_000 * base(p["cache_read_mtok"])
        + 30_000 * base(p["cache_write_mtok"])
        + 5_000 * base(p["output_mtok"])
    ) / MTOK
    assert list_cost("anthropic", "claude-sonnet-4-5-20250929", **tokens, at=AT) == expected


def test_anthropic_one_hour_cache_writes_cost_twice_the_base_input() -> None:
    """Anthropic: 5-minute writes 1.25x base input, 1-hour writes 2x; genai-prices lists
    only the first, so the second is priced from the input price."""
    p = listed("anthropic", "claude-sonnet-4-5")
    assert base(p["cache_write_mtok"]) == base(p["input_mtok"]) * Decimal("1.25")
    tokens = {"input": 20_000, "cached_input": 0, "cache_write": 30_000, "output": 0}
    cost = list_cost("anthropic", "claude-sonnet-4-5", **tokens, cache_write_1h=40_000, at=AT)
    expected = (
        20_000 * base(p["input_mtok"])
        + 30_000 * base(p["cache_write_mtok"])
        + 40_000 * 2 * base(p["input_mtok"])
    ) / MTOK
    assert cost == expected


def test_one_hour_cache_writes_count_toward_the_context_tier() -> None:
    """150k uncached + 100k one-hour writes is a 250k-token request: the long tier."""
    p = listed("anthropic", "claude-sonnet-4-5")
    input_price = p["input_mtok"]
    assert isinstance(input_price, TieredPrices)
    long_price = input_price.tiers[-1].price
    cost = list_cost("anthropic", "claude-sonnet-4-5", input=150_000, cached_input=0,
                     cache_write=0, cache_write_1h=100_000, output=0, at=AT)  # fmt: skip
    assert cost == (150_000 * long_price + 100_000 * 2 * long_price) / MTOK


def test_context_tier_is_chosen_from_total_input_including_cache() -> None:
    """150k uncached + 100k cached is a 250k-token request: the long-context tier applies."""
    assert has_context_tiers("anthropic", "claude-sonnet-4-5", at=AT)
    assert not has_context_tiers("openai", "gpt-4o", at=AT)
    p = listed("anthropic", "claude-sonnet-4-5")
    input_price = p["input_mtok"]
    assert isinstance(input_price, TieredPrices)
    long_context = input_price.tiers[-1]
    assert long_context.start < 250_000
    cost = list_cost("anthropic", "claude-sonnet-4-5", input=150_000, cached_input=100_000,
                     cache_write=0, output=0, at=AT)  # fmt: skip
    cheap = (150_000 * input_price.base + 100_000 * base(p["cache_read_mtok"])) / MTOK
    assert cost is not None and cost > cheap
    assert cost >= 150_000 * long_context.price / MTOK


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "no-such-model"),
        ("vllm-local", "llama-3.1-8b"),
        ("ollama", "gpt-4o"),
        ("openai", None),
        ("openai", ""),
    ],
)
def test_unknown_models_and_providers_give_none(provider: str, model: str | None) -> None:
    assert (
        list_cost(provider, model, input=1, cached_input=0, cache_write=0, output=1, at=AT) is None
    )


def test_provider_names_are_matched_like_genai_prices_does() -> None:
    gemini = find_model("gemini", "gemini-2.5-flash")
    assert gemini is not None and gemini[0].id == "google"


def test_bad_counts_and_naive_time_are_rejected() -> None:
    with pytest.raises(ValueError, match="negative"):
        list_cost("openai", "gpt-4o", input=-1, cached_input=0, cache_write=0, output=0, at=AT)
    with pytest.raises(TypeError, match="int"):
        list_cost("openai", "gpt-4o", input=1.0, cached_input=0, cache_write=0, output=0, at=AT)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timezone"):
        list_cost("openai", "gpt-4o", input=1, cached_input=0, cache_write=0, output=0,
                  at=datetime(2026, 3, 1))  # fmt: skip


def test_no_network_is_touched() -> None:
    """In a fresh interpreter an audit hook fails any socket use while we price tokens."""
    script = textwrap.dedent(
        """
        import sys
        def deny(event, args):
            if event.startswith("socket."):  # __new__, getaddrinfo, connect, ...
                raise RuntimeError(f"network use: {event} {args}")
        from datetime import UTC, datetime
        import billing.listprice as lp
        sys.addaudithook(deny)
        cost = lp.list_cost("openai", "gpt-4o", input=1000, cached_input=10, cache_write=0,
                            output=20, at=datetime(2026, 3, 1, tzinfo=UTC))
        lp.list_cost("anthropic", "claude-sonnet-4-5", input=1, cached_input=1, cache_write=1,
                     output=1, at=datetime(2026, 3, 1, tzinfo=UTC))
        print(type(cost).__name__, cost)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    kind, value = done.stdout.split()
    assert kind == "Decimal"
    assert Decimal(value) > 0


def test_audio_tokens_are_priced_at_the_audio_rates() -> None:
    """``gpt-audio``: OpenAI publishes $2.50 / $10 per million text tokens in / out and
    $32 / $64 for audio; genai-prices' audio counts are parts of its totals, ours are
    apart, and each is priced once at its own rate."""
    found = find_model("openai", "gpt-audio")
    assert found is not None
    prices = found[1].get_prices(AT)
    assert (prices.input_mtok, prices.output_mtok) == (Decimal("2.5"), Decimal("10"))
    assert (prices.input_audio_mtok, prices.output_audio_mtok) == (Decimal(32), Decimal(64))
    cost = list_cost("openai", "gpt-audio", input=20, cached_input=0, cache_write=0, output=9,
                     audio_input=44, audio_output=139, at=AT)  # fmt: skip
    # 20 * 2.50 + 44 * 32 + 9 * 10 + 139 * 64 = 50 + 1408 + 90 + 8896 = 10444 per million
    assert cost == Decimal("0.010444")


def test_gemini_audio_input_and_cached_audio_are_priced_apart() -> None:
    """Gemini 2.5 Flash: text $0.30, audio $1.00, cache reads $0.03 for text and $0.10
    for audio, output $2.50."""
    cost = list_cost("gemini", "gemini-2.5-flash", input=50, cached_input=200, cache_write=0,
                     output=140, audio_input=250, cached_audio_input=800, at=AT)  # fmt: skip
    # 50 * 0.30 + 200 * 0.03 + 250 * 1.00 + 800 * 0.10 + 140 * 2.50
    # = 15 + 6 + 250 + 80 + 350 = 701
    assert cost == Decimal("0.000701")


def test_realtime_cached_audio_is_priced_at_its_own_rate() -> None:
    """``gpt-realtime-mini``: cached text $0.06 per million, cached audio $0.30 (before,
    cached audio was inside ``cached_input`` and priced at $0.06)."""
    found = find_model("openai", "gpt-realtime-mini")
    assert found is not None
    prices = found[1].get_prices(AT)
    assert (prices.cache_read_mtok, prices.cache_audio_read_mtok) == (
        Decimal("0.06"), Decimal("0.3")
    )  # fmt: skip
    cost = list_cost("openai", "gpt-realtime-mini", input=0, cached_input=1_000_000,
                     cache_write=0, output=0, cached_audio_input=1_000_000, at=AT)  # fmt: skip
    assert cost == Decimal("0.36")


def test_a_model_listed_without_audio_prices_prices_its_audio_as_text() -> None:
    """genai-prices lists ``gpt-4o-audio-preview`` with its text prices only (OpenAI's
    audio rates, $40 / $80, are missing): its audio costs what its text costs there."""
    cost = list_cost("openai", "gpt-4o-audio-preview-2024-12-17", input=20, cached_input=0,
                     cache_write=0, output=9, audio_input=44, audio_output=1, at=AT)  # fmt: skip
    assert cost == ((20 + 44) * Decimal("2.5") + (9 + 1) * 10) / MTOK


def test_web_searches_are_priced_per_thousand_where_listed() -> None:
    """The probe's Anthropic call: 3 searches at $10 per 1,000 on top of its tokens;
    xAI's models list no search price in genai-prices 0.2.3: its searches cost 0 here."""
    tokens = dict(input=31_772, cached_input=0, cache_write=0, output=644, at=AT)
    plain = list_cost("anthropic", "claude-sonnet-4-20250514", **tokens)  # type: ignore[arg-type]
    searched = list_cost("anthropic", "claude-sonnet-4-20250514", web_search=3, **tokens)  # type: ignore[arg-type]
    assert plain is not None and searched is not None
    assert searched - plain == Decimal("0.03")
    xai = dict(provider="xai", model="grok-4-fast-reasoning", **tokens)
    assert list_cost(web_search=3, **xai) == list_cost(**xai)  # type: ignore[arg-type]


TOKENS = {"input": 100_000, "cached_input": 0, "cache_write": 0, "output": 10_000}
LATER = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("provider", "model", "served", "input_mtok", "output_mtok"),
    [
        ("openai", "gpt-5", {}, "1.25", "10"),
        ("openai", "gpt-5", {"service_tier": "default"}, "1.25", "10"),
        ("openai", "gpt-5", {"service_tier": "flex"}, "0.625", "5"),  # half
        ("openai", "gpt-5", {"service_tier": "Flex"}, "0.625", "5"),  # as spelt
        ("openai", "gpt-5", {"service_tier": "scale"}, "1.25", "10"),  # no variant: standard
        ("anthropic", "claude-opus-4-8", {}, "5", "25"),
        ("anthropic", "claude-opus-4-8", {"speed": "standard"}, "5", "25"),
        ("anthropic", "claude-opus-4-8", {"speed": "fast"}, "10", "50"),  # fast mode: 2x
        ("anthropic", "claude-opus-4-8", {"service_tier": "batch"}, "2.5", "12.5"),
    ],
)
def test_how_a_call_was_served_selects_its_list_price(
    provider: str, model: str, served: dict[str, str], input_mtok: str, output_mtok: str
) -> None:
    """Before, every call was priced at the standard rate: a flex GPT-5 call's provider
    cost was overstated 2x, a fast Opus 4.8 call's understated 2x (``billing margin``)."""
    expected = (100_000 * Decimal(input_mtok) + 10_000 * Decimal(output_mtok)) / MTOK
    assert list_cost(provider, model, **TOKENS, at=LATER, **served) == expected


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "claude-opus-4-8", "claude-haiku-4-5"])
@pytest.mark.parametrize(("uncached", "one_hour"), [(20_000, 40_000), (150_000, 100_000)])
def test_one_hour_writes_cost_what_genai_prices_lists_for_them(
    model: str, uncached: int, one_hour: int
) -> None:
    """Twice the input price (ours) is the table's own ``cache_write_1h_mtok``, below and
    above a long-context tier (250k in all: Sonnet 4.5's long tier)."""
    found = find_model("anthropic", model)
    assert found is not None
    provider, listed_model = found
    whole = uncached + 30_000 + one_hour
    usage = Usage(
        input_tokens=whole, cache_write_tokens=30_000 + one_hour, cache_write_1h_tokens=one_hour
    )
    table = listed_model.calc_price(usage, provider, genai_request_timestamp=LATER).total_price
    ours = list_cost(model=model, provider="anthropic", input=uncached, cached_input=0,
                     cache_write=30_000, cache_write_1h=one_hour, output=0, at=LATER)  # fmt: skip
    assert ours == table
