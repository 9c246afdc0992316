"""Governance in the proxy, in-process (mitmproxy's tflow): what it decides before the
store is read, and what it learns from calls that ended."""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime
from typing import Any

from mitmproxy import http

from addons.metering.governance import Governance
from meterline.catalog import Catalog
from meterline.entitlements import Refusal

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # ldap3 via mitmproxy.addons
    from mitmproxy.test import tflow


def catalog(entitlements: dict[str, list[dict[str, Any]]]) -> Catalog:
    """One customer per plan (``<plan>-co``), each with one consumer named like its plan."""
    return Catalog.model_validate(
        {
            "consumers": [{"name": plan} for plan in entitlements],
            "features": [
                {
                    "key": "out",
                    "name": "out",
                    "meter": {"provider": "openai", "model": "gpt-4o*", "token_types": ["output"]},
                }
            ],
            "plans": [
                {"key": plan, "name": plan, "currency": "USD", "entitlements": ents}
                for plan, ents in entitlements.items()
            ],
            "customers": [
                {
                    "key": f"{plan}-co",
                    "name": plan,
                    "currency": "USD",
                    "consumers": [plan],
                    "subscriptions": [{"plan": plan, "start": "2026-01-01T00:00:00Z"}],
                }
                for plan in entitlements
            ],
        }
    )


def call(model: str, max_tokens: int = 40) -> http.HTTPFlow:
    f = tflow.tflow()
    body = {"model": model, "messages": [], "max_tokens": max_tokens}
    f.request = http.Request.make(
        "POST", "https://api.openai.com/v1/chat/completions", json.dumps(body).encode()
    )
    return f


def event(flow: http.HTTPFlow, consumer: str, model: str, output: int) -> dict[str, Any]:
    ts = datetime.now(UTC).replace(tzinfo=None).isoformat()
    return {"event_id": f"e-{flow.id}", "consumer": consumer, "provider": "openai",
            "model": model, "ts": ts, "output_tokens": output}  # fmt: skip


def test_a_plan_that_cannot_refuse_is_not_refused_while_the_store_is_read() -> None:
    """Governed since a reload, not read yet: a hard limit waits (503, retry), an
    unlimited or soft plan goes through (before: 22 of 1,477 Enterprise calls got 503)."""
    gov = Governance()
    gov.use_catalog(
        catalog(
            {
                "ent": [{"feature": "out", "limit": "unlimited"}],
                "soft": [{"feature": "out", "limit": 10, "enforcement": "soft"}],
                "cap": [{"feature": "out", "limit": 100}],
            }
        )
    )
    assert not gov.ready
    assert gov.check("ent", "openai", "openai", call("gpt-4o")) is True
    assert gov.check("soft", "openai", "openai", call("gpt-4o")) is True
    waiting = gov.check("cap", "openai", "openai", call("gpt-4o"))
    assert isinstance(waiting, Refusal) and waiting.retry and waiting.kind == "unavailable"
    gov.deny_when_blind = True  # the store unreachable, policy deny: the same split
    gov.blind = True
    assert gov.check("ent", "openai", "openai", call("gpt-4o")) is True
    assert isinstance(gov.check("cap", "openai", "openai", call("gpt-4o")), Refusal)


def test_an_alias_is_learnt_from_the_model_a_call_was_billed_as() -> None:
    gov = Governance()
    gov.use_catalog(catalog({"cap": [{"feature": "out", "limit": 100}]}))
    gov.counters.unread_as_zero = True  # the store is not read here: count from zero
    first = call("prod-chat")
    assert gov.check("cap", "openai", "openai", first) is True
    assert gov.counters.reserved == {}  # prod-chat matches no limit: nothing reserved
    gov.finish(first.id, [event(first, "cap", "gpt-4o-2024-08-06", 40)])
    assert gov.served.billed_as.get("openai", "prod-chat") == ("gpt-4o-2024-08-06",)
    second = call("prod-chat", 60)
    assert gov.check("cap", "openai", "openai", second) is True
    assert list(gov.counters.reserved.values()) == [60]  # held on the gpt-4o* limit
    gov.finish(second.id, [event(second, "cap", "gpt-4o-2024-08-06", 60)])
    refused = gov.check("cap", "openai", "openai", call("prod-chat"))
    assert isinstance(refused, Refusal) and refused.reason == "limit:out"
    assert len(gov.served) == 0  # nothing left watched


def test_a_proxy_is_one_publisher_however_often_its_options_change() -> None:
    gov = Governance()
    for _ in range(3):  # every options update configures again
        gov.configure("2.0", "allow", "ducklake:postgres:dbname=x", "eu:1")
    first = gov.publisher
    gov.configure("2.0", "allow", "ducklake:postgres:dbname=x", "eu:1")
    assert gov.publisher == first and first.startswith("eu:1:")
    assert Governance().publisher != Governance().publisher  # two processes never share rows
