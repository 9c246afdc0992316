"""What metered tokens cost at the providers' list prices, offline, via ``genai-prices``.

``billing margin`` compares what we charge with what the provider charges. The prices come
from the price table bundled in the installed ``genai-prices`` package: this module builds
its own snapshot of that table, so it never uses the package's auto-updater (which fetches
prices over HTTP) nor a snapshot someone else installed globally. Results are Decimal
(genai-prices computes in Decimal), in USD, exact and unrounded.

Token mapping. Our events split input into three disjoint counts (``input`` = uncached,
``cached_input`` = read from the provider's cache, ``cache_write`` = written to it);
genai-prices' ``input_tokens`` is the *total* input, with ``cache_read_tokens`` and
``cache_write_tokens`` as parts of it that it prices separately. So::

    input_tokens        = input + cached_input + cache_write + cache_write_1h + audio_input
                          + cached_audio_input
    cache_read_tokens   = cached_input + cached_audio_input
    cache_write_tokens  = cache_write
    input_audio_tokens  = audio_input + cached_audio_input
    cache_audio_read_tokens = cached_audio_input
    output_tokens       = output + audio_output   (reasoning is already inside output)
    output_audio_tokens = audio_output

genai-prices' audio counts are parts of its totals (its unit registry makes
``input_audio_tokens`` a descendant of ``input_tokens`` and ``output_audio_tokens`` one of
``output_tokens``; the price of each part is taken off its total's), so our disjoint audio
counts are added to the totals and named again as the audio parts: a model with audio
prices (``gpt-audio``: $32 / $64 per million audio tokens against $2.50 / $10 for text;
``gemini-2.5-flash``: $1.00 audio input against $0.30) prices them at those, a model
without (``gpt-4o-audio-preview`` in genai-prices 0.2.3 lists only its text prices)
prices them as text. Cached audio (``cached_audio_input``) is a part of both the cache
read and the audio input in genai-prices' registry (``cache_audio_read_tokens``), so it
is named in all three and priced at the model's cached-audio price where it lists one
(``gpt-realtime-mini``: $0.30 per million against $0.06 for cached text; Gemini 2.5
Flash $0.10 against $0.03).

How a call was served selects genai-prices' price variants (:func:`price_context`):
a ``flex`` GPT-5 call costs $0.625 per million input tokens against $1.25, a fast Claude
Opus 4.8 call $10 against $5.

Server-side web searches (``web_search``, a count of calls, not tokens) are
genai-prices' ``web_searches``, priced per 1,000 at the model's ``web_searches_kcount``
where it lists one (genai-prices 0.2.3: Anthropic and OpenAI models $10, Gemini 2.5 $35
and Gemini 3 $14); a model without (xAI's) prices them at 0, so ``billing margin``
leaves them out of its cost there.

One-hour cache writes (``cache_write_1h``, Anthropic's ``ttl: "1h"``) are priced as
input twice over, at the input price of the tier the request's whole input selects (once
inside ``input_tokens``, once added): Anthropic's price, 2x base input, on every model
(older genai-prices tables listed none; 0.2.3 lists ``cache_write_1h_mtok`` for
Anthropic's models, at the same figure, which tests/billing/test_listprice.py checks).

One call prices one request's worth of usage, as genai-prices does: models whose price
depends on the request's context length (e.g. Claude Sonnet 4.5 above 200k input tokens,
Gemini 2.5 Pro) pick the tier from the input tokens passed in, and per-request fees are
charged once. Summing per-event costs is exact; pricing a period's total in one call
overstates such models. :func:`has_context_tiers` tells which models are affected.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from functools import cache

from genai_prices import data as _bundled
from genai_prices.data_snapshot import DataSnapshot
from genai_prices.types import ModelInfo, Provider, TieredPrices, Usage, calc_unit_price

from billing.money import money_context
from meterline.utc import as_utc

LIST_PRICE_CURRENCY = "USD"
"""genai-prices lists every price in US dollars."""


@cache
def _snapshot() -> DataSnapshot:
    """The bundled price table only: never the auto-updated or a globally set snapshot."""
    return DataSnapshot(providers=_bundled.providers, from_auto_update=False)


def find_model(provider: str, model: str | None) -> tuple[Provider, ModelInfo] | None:
    """genai-prices' provider and model for our provider name and model id, or None.

    Provider names are matched the way genai-prices does (``gemini`` -> google,
    ``xai`` -> x-ai, ``azure-openai`` -> openai); a provider it does not know (a local vLLM)
    gives None rather than a guess from the model name, and so does a missing model.
    """
    if not model:
        return None
    try:
        return _snapshot().find_provider_model(model, None, provider, None)
    except LookupError:
        return None


def price_context(service_tier: str | None, speed: str | None) -> dict[str, str] | None:
    """genai-prices' price variants for how a call was served: its ``service_tier``
    (OpenAI's ``flex`` at about half the ``default`` rate, ``priority`` / ``fast`` at up
    to twice; Anthropic's ``batch`` is genai-prices' ``processing: batch``) and its
    ``speed`` (Anthropic's fast mode, ``fast``: a multiple of every rate). A value the
    table has no variant for selects none: the standard price. ``inference_geo`` is not
    there: genai-prices 0.2.3 lists no US-only prices, so a ``us`` call's list cost is
    its global one (Anthropic bills it 1.1x on Claude 4.6 and later)."""
    context: dict[str, str] = {}
    tier = service_tier.strip().lower() if service_tier else ""
    if tier == "batch":
        context["processing"] = "batch"
    elif tier:
        context["service_tier"] = tier
    if speed and speed.strip():
        context["speed"] = speed.strip().lower()
    return context or None


def has_context_tiers(provider: str, model: str | None, *, at: datetime) -> bool:
    """Whether the model's list price at ``at`` depends on the request's input size."""
    found = find_model(provider, model)
    if found is None:
        return False
    prices = found[1].get_prices(as_utc(at, "at"))
    return any(isinstance(v, TieredPrices) for v in vars(prices).values())


def list_cost(
    provider: str,
    model: str | None,
    *,
    input: int,
    cached_input: int,
    cache_write: int,
    output: int,
    at: datetime,
    cache_write_1h: int = 0,
    audio_input: int = 0,
    audio_output: int = 0,
    web_search: int = 0,
    cached_audio_input: int = 0,
    service_tier: str | None = None,
    speed: str | None = None,
) -> Decimal | None:
    """List-price cost in USD of one request's tokens at time ``at``; None for unknown models.

    ``input`` is uncached input, as in our events (see the module docstring for the mapping).
    ``service_tier`` and ``speed``: how the call was served, as the event stores them
    (:func:`price_context`).
    """
    counts = {
        "input": input,
        "cached_input": cached_input,
        "cache_write": cache_write,
        "cache_write_1h": cache_write_1h,
        "audio_input": audio_input,
        "output": output,
        "audio_output": audio_output,
        "web_search": web_search,
        "cached_audio_input": cached_audio_input,
    }
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int token count, not {type(value).__name__}")
        if value < 0:
            raise ValueError(f"{name} must not be negative, got {value}")
    when = as_utc(at, "at")
    found = find_model(provider, model)
    if found is None:
        return None
    found_provider, found_model = found
    whole_input = input + cached_input + cache_write + cache_write_1h + audio_input
    whole_input += cached_audio_input
    usage = Usage(
        input_tokens=whole_input,
        cache_read_tokens=cached_input + cached_audio_input,
        cache_write_tokens=cache_write,
        input_audio_tokens=audio_input + cached_audio_input,
        cache_audio_read_tokens=cached_audio_input,  # a part of both (module doc)
        output_tokens=output + audio_output,
        output_audio_tokens=audio_output,
        web_searches=web_search,  # priced per 1,000 where listed (module doc)
    )
    context = price_context(service_tier, speed)
    with money_context():
        calc = found_model.calc_price(
            usage, found_provider, genai_request_timestamp=when, price_context=context
        )
        total = calc.total_price
        if cache_write_1h:  # the second helping of the input price (see the module doc)
            input_price = found_model.get_prices(when, context).input_mtok
            total += calc_unit_price(input_price, cache_write_1h, whole_input, 1_000_000)
    if not isinstance(total, Decimal):  # defensive: the package promises Decimal
        raise TypeError(f"genai-prices returned {type(total).__name__}, expected Decimal")
    return total
