"""Audio tokens are their own token types, priced by their own rate cards.

OpenAI's GPT-4o Audio bills text at $2.50 per million input tokens and audio at $40;
the proxy counts the audio apart (``audio_input_tokens``, ``audio_output_tokens``), and so
does billing. A plan that prices only text does not lose the audio: it is "unpriced".
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import duckdb
import yaml

from billing.dashboard.pages import usage_page
from billing.dashboard.queries import Scope, resolve_range, timeline
from billing.invoices import generate_invoices
from billing.model import Invoice
from billing.store import billing_store
from billing.usage import UsageQuery, usage_report
from meterline.migrations import EVENT_MIGRATIONS, migrate
from tests.billing.events import Event, Setup, add_events, setup, utc

CATALOG = """
version: 1
consumers:
  - name: agent-a
features:
  - key: audio-text-in
    name: GPT-4o Audio text input
    meter: {provider: openai, model: "gpt-4o-audio-*", token_types: [input]}
  - key: audio-in
    name: GPT-4o Audio audio input
    meter: {provider: openai, model: "gpt-4o-audio-*", token_types: [audio_input]}
  - key: audio-out
    name: GPT-4o Audio output (text and audio)
    meter: {provider: openai, model: "gpt-4o-audio-*", token_types: [output, audio_output]}
plans:
  - key: p
    name: P
    currency: USD
    billing_cadence: P1M
    rate_cards:
      - key: text-in
        name: Text input
        feature: audio-text-in
        price: {type: unit, amount: "2.50", per: 1000000}
      - key: audio-in
        name: Audio input
        feature: audio-in
        price: {type: unit, amount: "40.00", per: 1000000}
customers:
  - key: alpha
    name: Alpha
    currency: USD
    consumers: [agent-a]
    subscriptions:
      - {plan: p, start: "2026-01-01T00:00:00Z"}
"""


def _call(when: str, text: int, audio: int, output: int = 0, audio_out: int = 0) -> Event:
    return Event(
        utc(when), model="gpt-4o-audio-preview-2024-12-17", input=text, audio_input=audio,
        output=output, audio_output=audio_out,
    )  # fmt: skip


def _invoice(s: Setup) -> Invoice:
    with billing_store(s.db) as con:
        [inv] = generate_invoices(
            con, s.catalog, "2026-01", now=utc("2026-02-01T00:00:05Z")
        ).invoices
    return inv


def test_audio_input_is_billed_at_the_audio_rate(tmp_path: Path) -> None:
    s = setup(tmp_path, CATALOG)
    # The real recording openai/chat-gpt-4o-audio-input: 20 text + 44 audio tokens.
    add_events(s.db, _call("2026-01-05", 20, 44), _call("2026-01-06", 180_000, 256_000))
    inv = _invoice(s)
    lines = {ln.rate_card_key: (ln.quantity, ln.amount) for ln in inv.lines}
    # text: 180,020 * 2.50 / 1M = 0.45005 -> 0.45; audio: 256,044 * 40 / 1M = 10.24176
    # -> 10.24 (all at the text rate, as before the split: 436,064 * 2.50 / 1M = 1.09)
    assert lines == {
        "text-in": (180_020, Decimal("0.45")),
        "audio-in": (256_044, Decimal("10.24")),
    }
    assert inv.total == Decimal("10.69")


def test_a_plan_pricing_only_text_lists_the_audio_as_unbilled(tmp_path: Path) -> None:
    """A feature listing only ``input`` (a catalog older than audio) leaves the audio
    under "unpriced", and a plan without an output card leaves both outputs there."""
    s = setup(tmp_path, CATALOG.replace("token_types: [audio_input]", "token_types: [input]"))
    add_events(s.db, _call("2026-01-05", 20, 44, output=9, audio_out=139))
    with billing_store(s.db) as con:
        rows = usage_report(
            con,
            s.catalog,
            UsageQuery(start=utc("2026-01-01"), end=utc("2026-02-01"), unbilled=True),
        )
    assert [(r["input"], r["audio_input"], r["output"], r["audio_output"]) for r in rows] == [
        (0, 44, 9, 139)
    ]


def test_events_stored_before_audio_was_counted_read_0(tmp_path: Path) -> None:
    """A store migrated up to 0020 holds events whose audio is inside input_tokens:
    migration 0030 adds the audio columns, and those events read 0 and bill as before."""
    s = setup(tmp_path / "new", CATALOG)
    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    before = [m for m in EVENT_MIGRATIONS if m.name < "0030"]
    assert migrate(con, before) == [m.name for m in before]
    con.execute(
        "INSERT INTO usage_events (event_id, ts, ingested_at, consumer, provider, flavor, "
        "model, input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, "
        "reasoning_tokens, estimated, method, host, path, streamed) VALUES ('old', "
        "'2026-01-05 10:00:00', '2026-01-05 10:00:01', 'agent-a', 'openai', 'openai', "
        "'gpt-4o-audio-preview', 64, 0, 0, 9, 0, false, 'POST', 'api.openai.com', "
        "'/v1/chat/completions', false)"
    )
    upto_0030 = [m for m in EVENT_MIGRATIONS if m.name < "0040"]
    assert migrate(con, upto_0030) == ["0030_audio_tokens"]
    assert migrate(con, EVENT_MIGRATIONS) == [
        "0040_web_search_calls",
        "0050_cached_audio_input",
        "0060_service_tier",
        "0070_speed_inference_geo",
    ]
    con.close()
    with billing_store(db) as con:
        assert con.execute(
            "SELECT input_tokens, audio_input_tokens, audio_output_tokens FROM usage_events"
        ).fetchall() == [(64, 0, 0)]
        [inv] = generate_invoices(
            con, s.catalog, "2026-01", now=utc("2026-02-01T00:00:05Z")
        ).invoices
    lines = {ln.rate_card_key: ln.quantity for ln in inv.lines}
    assert lines == {"text-in": 64, "audio-in": 0}


def cached_catalog(audio_types: list[str]) -> str:
    """:data:`CATALOG`'s customer on a plan pricing ``gpt-realtime-mini``'s cached text at
    $0.06 per million and the feature metering ``audio_types`` at $0.30."""
    doc = yaml.safe_load(CATALOG)
    meter = {"provider": "openai", "model": "gpt-realtime-mini*"}
    doc["features"] = [
        {"key": key, "name": key, "meter": {**meter, "token_types": types}}
        for key, types in (("cached-text", ["cached_input"]), ("cached-audio", audio_types))
    ]
    doc["plans"][0]["rate_cards"] = [
        {"key": key, "name": key, "feature": key,
         "price": {"type": "unit", "amount": amount, "per": 1_000_000}}
        for key, amount in (("cached-text", "0.06"), ("cached-audio", "0.30"))
    ]  # fmt: skip
    return yaml.safe_dump(doc, sort_keys=False)


def test_cached_audio_is_billed_at_the_cached_audio_rate(tmp_path: Path) -> None:
    """``gpt-realtime-mini`` prices cached audio at $0.30 per million against $0.06 for
    cached text: a voice session re-reads its earlier audio every turn. Before, cached
    audio was inside ``cached_input`` and billed at the text rate (here $0.24 instead of
    $1.26)."""
    s = setup(tmp_path, cached_catalog(["cached_audio_input"]))
    turn = Event(utc("2026-01-05"), model="gpt-realtime-mini", cached_input=1_000_000,
                 cached_audio_input=3_000_000)  # fmt: skip
    add_events(s.db, turn)
    inv = _invoice(s)
    lines = {ln.rate_card_key: (ln.quantity, ln.amount) for ln in inv.lines}
    assert lines == {
        "cached-text": (1_000_000, Decimal("0.06")),
        "cached-audio": (3_000_000, Decimal("0.90")),
    }
    assert inv.total == Decimal("0.96")


def test_a_plan_pricing_cached_text_only_lists_the_cached_audio_as_unbilled(
    tmp_path: Path,
) -> None:
    """A feature listing only ``cached_input`` (a catalog older than the split) leaves
    the cached audio under "unpriced": it is never billed at the text rate unasked."""
    s = setup(tmp_path, cached_catalog(["input"]))
    add_events(s.db, Event(utc("2026-01-05"), model="gpt-realtime-mini", cached_input=5,
                           cached_audio_input=7))  # fmt: skip
    with billing_store(s.db) as con:
        rows = usage_report(
            con,
            s.catalog,
            UsageQuery(start=utc("2026-01-01"), end=utc("2026-02-01"), unbilled=True),
        )
    assert [(r["cached_input"], r["cached_audio_input"]) for r in rows] == [(0, 7)]


def test_the_dashboards_output_figure_counts_audio_output(tmp_path: Path) -> None:
    """Before: "Output tokens" showed text output only (audio output was in ``output``
    until audio was counted apart, so the figure fell by the audio share)."""
    s = setup(tmp_path, CATALOG)
    add_events(s.db, Event(utc("2026-01-05"), input=10, output=30, audio_output=400))
    rng = resolve_range(utc("2026-01-01"), utc("2026-02-01"), "day", utc("2026-02-01"))
    with billing_store(s.db) as con:
        data = timeline(con, s.catalog, Scope(), rng)
    page = usage_page(data, s.catalog, "/usage.json")
    assert '<div id="total-output">430</div>' in page


def voice_plan_from_the_docs() -> str:
    """docs/catalog.md's voice plan (the YAML block after "Voice sessions"), given a
    customer with agent-a on it since 1 January 2026."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "catalog.md").read_text()
    block = doc.split("Voice sessions", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    catalog = yaml.safe_load(block)
    catalog["version"] = 1
    catalog["consumers"] = [{"name": "agent-a"}]
    subscription = {"plan": "voice", "start": "2026-01-01T00:00:00Z"}
    customer = {"key": "alpha", "name": "Alpha", "currency": "USD", "consumers": ["agent-a"]}
    catalog["customers"] = [{**customer, "subscriptions": [subscription]}]
    return yaml.safe_dump(catalog, sort_keys=False)


def test_the_catalog_chapters_voice_plan_prices_each_token_type_at_its_rate(
    tmp_path: Path,
) -> None:
    """A month of one voice agent on ``gpt-realtime-mini`` through the documented plan:
    each of the six token types on its own line, at its own price, exactly."""
    s = setup(tmp_path, voice_plan_from_the_docs())
    add_events(
        s.db,
        Event(utc("2026-01-05"), model="gpt-realtime-mini-2025-10-06", input=1_250_000,
              cached_input=4_000_000, audio_input=900_000, cached_audio_input=6_000_000,
              output=300_000, audio_output=700_000),
    )  # fmt: skip
    inv = _invoice(s)
    lines = {ln.rate_card_key: (ln.quantity, ln.amount) for ln in inv.lines}
    assert lines == {
        "rt-text-in": (1_250_000, Decimal("0.75")),
        "rt-text-cached": (4_000_000, Decimal("0.24")),
        "rt-text-out": (300_000, Decimal("0.72")),
        "rt-audio-in": (900_000, Decimal("9.00")),
        "rt-audio-cached": (6_000_000, Decimal("1.80")),
        "rt-audio-out": (700_000, Decimal("14.00")),
    }
    assert inv.total == Decimal("26.51")
