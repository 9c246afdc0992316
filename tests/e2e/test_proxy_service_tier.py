"""The service tier a call was served at, through the real proxy: stored with the event,
and counted only by the features whose ``service_tier`` filter matches it (a fake OpenAI
that answers ``service_tier: flex`` as OpenAI does; official SDK)."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
import yaml

from tests.conftest import KEYS, ProxyFactory
from tests.e2e.test_governance import rows_where
from tests.support.clients import openai_client
from tests.support.governance import governed_catalog
from tests.support.upstream import FakeProvider

HI = [{"role": "user", "content": "hi"}]
FLEX_OUT = {
    "key": "gpt-flex-out",
    "name": "GPT-4o flex output tokens",
    "meter": {"provider": "fake-openai", "model": "gpt-4o*", "service_tier": "flex",
              "token_types": ["output"]},
}  # fmt: skip


def tiered_catalog(path: Path, upstream: FakeProvider) -> Path:
    """A hard limit of 100 output tokens on the default tier's feature; flex apart."""
    governed_catalog(
        path,
        upstream,
        {"alice": KEYS["alice"]},
        entitlements=[{"feature": "gpt-out", "limit": 100}],
    )
    doc = yaml.safe_load(path.read_text())
    for feature in doc["features"]:
        if feature["key"] == "gpt-out":
            feature["meter"]["service_tier"] = "default"
    doc["features"].append(FLEX_OUT)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_flex_calls_are_stored_as_flex_and_not_counted_against_the_default_limit(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory
) -> None:
    """120 flex output tokens, then default calls of 40: 40, 80, 120 are admitted (the
    call that crosses is the last one), the next refused. Before, the flex calls filled
    the default feature's limit: the first default call was refused."""
    proxy = start_proxy(catalog=tiered_catalog(tmp_path / "catalog.yaml", fake_provider))
    fake = {"x-fake": "output=40"}
    with openai_client(proxy, fake_provider, KEYS["alice"]) as client:
        stream = client.chat.completions.create(
            model="gpt-4o", messages=HI, max_tokens=40, service_tier="flex", stream=True,
            stream_options={"include_usage": True}, extra_headers=fake,
        )  # fmt: skip
        assert [c.service_tier for c in stream][-1] == "flex"
        events = client.responses.create(
            model="gpt-4o", input="hi", max_output_tokens=40, service_tier="flex", stream=True,
            extra_headers=fake,
        )  # fmt: skip
        assert [e.type for e in events][-1] == "response.completed"
        reply = client.chat.completions.create(
            model="gpt-4o", messages=HI, max_tokens=40, service_tier="flex", extra_headers=fake
        )
        assert reply.service_tier == "flex"
        flex = rows_where(proxy, "service_tier = 'flex'", 3)  # counted and stored
        assert [r["output_tokens"] for r in flex] == [40, 40, 40]
        assert {r["path"] for r in flex} == {"/v1/chat/completions", "/v1/responses"}
        for tier in (None, "auto", "default"):  # 40, 80, 120
            extra = {} if tier is None else {"service_tier": tier}
            client.chat.completions.create(
                model="gpt-4o", messages=HI, max_tokens=40, extra_headers=fake, extra_body=extra
            )
        with pytest.raises(openai.RateLimitError) as err:
            client.chat.completions.create(
                model="gpt-4o", messages=HI, max_tokens=40, extra_headers=fake
            )
    assert "limit of 100 gpt-out units" in err.value.message
    served = rows_where(proxy, "reason IS NULL AND service_tier IS DISTINCT FROM 'flex'", 3)
    # no tier asked: none reported (NULL, the standard tier); "auto": served at default
    assert [r["service_tier"] for r in served] == [None, "default", "default"]
    assert [r["reason"] for r in rows_where(proxy, "reason IS NOT NULL", 1)] == ["limit:gpt-out"]
    # The default tier's limit is reached; a call that asks for flex is not under it (the
    # tier a request names decides which limits apply). Before, it was refused too.
    with openai_client(proxy, fake_provider, KEYS["alice"]) as client:
        reply = client.chat.completions.create(
            model="gpt-4o", messages=HI, max_tokens=40, service_tier="flex", extra_headers=fake
        )
    assert reply.service_tier == "flex"
    assert len(rows_where(proxy, "service_tier = 'flex'", 4)) == 4


def test_a_tier_asked_for_but_not_served_stops_sparing_calls_the_default_limit(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory
) -> None:
    """The provider serves a ``flex`` request at ``default`` (as OpenAI may serve a
    ``priority`` one under load). Before, every call asking ``flex`` skipped the default
    tier's limit and was billed there: 880 default tokens stored on a cap of 100. Now the
    first such call teaches the proxy that the tier was not kept, and from then on those
    calls meet every limit. A tier no feature names (``bogus``) never spares a limit."""
    proxy = start_proxy(catalog=tiered_catalog(tmp_path / "catalog.yaml", fake_provider))
    served_default = {"x-fake": "output=40,tier=default"}

    def call(tier: str) -> None:
        client.chat.completions.create(
            model="gpt-4o", messages=HI, max_tokens=40, service_tier=tier,  # type: ignore[arg-type]
            extra_headers=served_default,
        )  # fmt: skip

    with openai_client(proxy, fake_provider, KEYS["alice"]) as client:
        call("default")
        call("default")
        call("flex")  # checked as flex (nothing held it), served at default: 120 used
        rows_where(proxy, "reason IS NULL", 3)
        proxy.wait_for_log(r"served a call asking for tier 'flex' at 'default'", timeout=10)
        for tier in ("flex", "bogus"):
            with pytest.raises(openai.RateLimitError):
                call(tier)
    served = rows_where(proxy, "reason IS NULL", 3)
    assert sum(r["output_tokens"] for r in served) == 120


def test_fast_is_openai_s_priority_by_its_new_name(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory
) -> None:
    """OpenAI renamed priority processing "Fast mode" (30 July 2026) and takes either
    name. With the default tier's limit full, a call asking ``fast`` is checked as a
    priority one (no limit of it here), and one asking ``priority`` and answered ``fast``
    kept its tier: both pass, again and again. Before, ``fast`` was no documented tier, so
    it met every limit and was refused."""
    proxy = start_proxy(catalog=tiered_catalog(tmp_path / "catalog.yaml", fake_provider))
    with openai_client(proxy, fake_provider, KEYS["alice"]) as client:

        def call(tier: str | None, served: str = "") -> None:
            header = "output=40" + (f",tier={served}" if served else "")
            client.chat.completions.create(
                model="gpt-4o", messages=HI, max_tokens=40, extra_headers={"x-fake": header},
                extra_body={} if tier is None else {"service_tier": tier},
            )  # fmt: skip

        for _ in range(3):  # 40, 80, 120 on the default tier's limit of 100
            call(None)
        with pytest.raises(openai.RateLimitError):
            call(None)
        for _ in range(2):
            call("fast")
            call("priority", served="fast")
    served = rows_where(proxy, "service_tier = 'fast'", 4)
    assert [r["reason"] for r in served] == [None] * 4
