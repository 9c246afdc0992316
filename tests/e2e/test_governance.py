"""Entitlements enforced by the real proxy, seen through the official SDKs."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anthropic
import openai
import pytest
from click.testing import CliRunner

from billing.cli import main as billing_cli
from tests.conftest import KEYS, ProxyFactory
from tests.support.clients import anthropic_client, async_openai_client, openai_client
from tests.support.governance import governed_catalog
from tests.support.proxy import MeterProxy
from tests.support.upstream import FakeProvider

MESSAGES = [{"role": "user", "content": "Count to three."}]
ALICE = {"alice": KEYS["alice"], "bob": KEYS["bob"]}


def chat(
    client: openai.OpenAI,
    output: int,
    *,
    max_tokens: int | None = None,
    model: str = "gpt-4o",
    think: float = 0,
) -> None:
    """A call answering ``output`` tokens (after ``think`` seconds)."""
    client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        max_tokens=max_tokens or output,
        extra_headers={"x-fake": f"output={output}" + (f",think={think}" if think else "")},
    )


def rows_where(proxy: MeterProxy, where: str, count: int, timeout: float = 30.0) -> list[dict]:
    """The events matching ``where`` once there are ``count`` of them (fails after timeout)."""
    deadline = time.monotonic() + timeout
    rows: list[dict] = []
    while time.monotonic() < deadline:
        rows = proxy.events(where)
        if len(rows) >= count:
            assert len(rows) == count, f"{len(rows)} events where {where}, expected {count}"
            return rows
        time.sleep(0.05)
    raise AssertionError(f"{len(rows)} events where {where}, expected {count}")


def refused(proxy: MeterProxy, count: int) -> list[dict]:
    return rows_where(proxy, "reason IS NOT NULL", count)


def test_hard_limit_refuses_with_the_providers_own_errors(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory
) -> None:
    """Limit 100 output tokens, 40 per call: 40, 80, 120 (the call that crosses the limit
    is the last one allowed), then OpenAI's and Anthropic's own 429 exceptions."""
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        entitlements=[
            {"feature": "gpt-out", "limit": 100},
            {"feature": "claude-out", "limit": 80},
        ],
    )
    proxy = start_proxy(catalog=catalog)
    with openai_client(proxy, fake_provider, KEYS["alice"]) as client:
        for _ in range(3):
            chat(client, 40)
        with pytest.raises(openai.RateLimitError) as err:
            chat(client, 40)
    assert err.value.status_code == 429
    assert err.value.code == "insufficient_quota"
    assert "limit of 100 gpt-out units" in err.value.message
    assert "resets at 20" in err.value.message
    assert int(err.value.response.headers["retry-after"]) > 0

    with anthropic_client(proxy, fake_provider, KEYS["bob"]) as claude:
        for _ in range(2):  # 40, 80: reaches the limit exactly
            claude.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=40,
                messages=MESSAGES,
                extra_headers={"x-fake": "output=40"},
            )
        with pytest.raises(anthropic.RateLimitError) as aerr:
            claude.messages.create(model="claude-sonnet-4-5", max_tokens=40, messages=MESSAGES)
    assert aerr.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]

    rows = refused(proxy, 2)
    assert sorted(r["reason"] for r in rows) == ["limit:claude-out", "limit:gpt-out"]
    for row in rows:
        assert row["status"] == 429 and row["consumer"] in ("alice", "bob")
        assert row["input_tokens"] == row["output_tokens"] == 0
    alice = rows_where(proxy, "consumer = 'alice'", 4)
    assert [r["reason"] for r in alice] == [None, None, None, "limit:gpt-out"]


def test_model_not_granted_is_403(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory
) -> None:
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        entitlements=[
            {"feature": "gpt-out", "type": "boolean"},
            {"feature": "claude-out", "limit": "unlimited"},
        ],
    )
    proxy = start_proxy(catalog=catalog)
    with openai_client(proxy, fake_provider, KEYS["alice"]) as client:
        chat(client, 5)  # granted
        with pytest.raises(openai.PermissionDeniedError) as err:
            chat(client, 5, model="o3-mini")
    assert "does not include model 'o3-mini'" in err.value.message
    [row] = refused(proxy, 1)
    assert (row["reason"], row["status"], row["model"]) == ("not_granted", 403, "o3-mini")


def test_burst_of_100_concurrent_calls_at_a_hard_limit(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory
) -> None:
    """Each call reserves max_tokens=60 and uses 50: the overshoot stays within one
    reservation however the 100 calls interleave."""
    limit, reserve, used_per_call = 1000, 60, 50
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        entitlements=[{"feature": "gpt-out", "limit": limit}],
    )
    proxy = start_proxy(catalog=catalog)

    async def burst() -> list[int]:
        client = async_openai_client(proxy, fake_provider, KEYS["alice"])

        async def one() -> int:
            try:
                stream = await client.chat.completions.create(
                    model="gpt-4o",
                    messages=MESSAGES,
                    max_tokens=reserve,
                    stream=True,
                    extra_headers={"x-fake": f"output={used_per_call},delay=0.02"},
                )
                async for _ in stream:  # read to the end: a stream left unread is cut
                    pass
                return 200
            except openai.RateLimitError:
                return 429

        try:
            return await asyncio.gather(*(one() for _ in range(100)))
        finally:
            await client.close()

    statuses = asyncio.run(burst())
    allowed = statuses.count(200)
    rows = rows_where(proxy, "reason IS NULL", allowed)
    used = sum(r["output_tokens"] for r in rows)
    overshoot = used - limit
    print(
        f"burst: {allowed} allowed, {statuses.count(429)} refused, used {used}, "
        f"overshoot {overshoot} (bound {reserve})"
    )
    assert statuses.count(429) == 100 - allowed > 0
    assert used == allowed * used_per_call
    assert overshoot <= reserve
    refused(proxy, 100 - allowed)
    # Settled, the reservations gave way to the metered 50s: calls one by one fill the
    # limit up to the call that reaches it, and the next is refused.
    with openai_client(proxy, fake_provider, KEYS["alice"]) as client:
        for _ in range((limit - used) // used_per_call):
            chat(client, used_per_call, max_tokens=reserve)
        with pytest.raises(openai.RateLimitError):
            chat(client, used_per_call, max_tokens=reserve)
    rows = rows_where(proxy, "reason IS NULL", allowed + (limit - used) // used_per_call)
    assert sum(r["output_tokens"] for r in rows) == limit


def test_restart_mid_period_rebuilds_from_store_and_spool(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory
) -> None:
    """Killed (-9) with events still in its spool, a restarted proxy counts each once."""
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        entitlements=[{"feature": "gpt-out", "limit": 120}],
    )
    # Flushing every 30 s: the events are still in the spool when the proxy is killed.
    first = start_proxy(catalog=catalog, options={"meter_flush_interval": 30})
    with openai_client(first, fake_provider, KEYS["alice"]) as client:
        chat(client, 40)
        chat(client, 40)
    deadline = time.monotonic() + 30  # the events reach the spool (written after the reply)
    while sum(p.read_bytes().count(b"\n") for p in first.spool.glob("*.[oj]*")) < 2:
        assert time.monotonic() < deadline, "the two events never reached the spool"
        time.sleep(0.02)
    first.kill()
    assert first.events() == []
    again = MeterProxy(
        first.workdir,
        catalog=catalog,
        confdir=first.confdir,
        options={**first.options, "meter_flush_interval": 0.1},
        env=first.env,
    ).start()
    try:
        with openai_client(again, fake_provider, KEYS["alice"]) as client:
            chat(client, 40)  # 80 -> 120: reaches the limit, allowed
            with pytest.raises(openai.RateLimitError):
                chat(client, 40)
        rows = rows_where(again, "reason IS NULL", 3)
        assert sum(r["output_tokens"] for r in rows) == 120
    finally:
        again.stop()


def test_catalog_edit_changes_a_limit_live(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory
) -> None:
    path = tmp_path / "catalog.yaml"
    governed_catalog(path, fake_provider, ALICE, entitlements=[{"feature": "gpt-out", "limit": 40}])
    proxy = start_proxy(catalog=path)
    with openai_client(proxy, fake_provider, KEYS["alice"]) as client:
        chat(client, 40)
        with pytest.raises(openai.RateLimitError):
            chat(client, 40)
        mark = proxy.log_mark()
        governed_catalog(
            path,
            fake_provider,
            ALICE,
            entitlements=[{"feature": "gpt-out", "limit": 40}],
            overrides=[{"feature": "gpt-out", "limit": 80}],  # acme's own, higher limit
        )
        proxy.wait_for_log("catalog .* reloaded", since=mark)
        chat(client, 40)
        with pytest.raises(openai.RateLimitError) as err:
            chat(client, 40)
    assert "customer acme limit of 80" in err.value.message


def test_period_rollover_resets_the_counters(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory
) -> None:
    """A daily usage period that ends a few seconds into the test (set by a live edit, so
    the proxy's start-up time does not eat into them)."""
    path = tmp_path / "catalog.yaml"
    governed_catalog(path, fake_provider, ALICE, entitlements=[])
    proxy = start_proxy(catalog=path)
    mark = proxy.log_mark()
    boundary = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=8)
    governed_catalog(
        path,
        fake_provider,
        ALICE,
        entitlements=[{"feature": "gpt-out", "limit": 40, "period": "P1D"}],
        start=boundary - timedelta(days=4),
    )
    proxy.wait_for_log("catalog .* reloaded", since=mark)
    # Governed since this reload: calls wait (503, retryable) until the store is read.
    proxy.wait_for_log("usage limits enforced from the store", since=mark, timeout=30)
    with openai_client(proxy, fake_provider, KEYS["alice"]) as client:
        chat(client, 40)
        with pytest.raises(openai.RateLimitError) as err:
            chat(client, 40)
        assert f"resets at {boundary:%Y-%m-%dT%H:%M:%SZ}" in err.value.message
        assert datetime.now(UTC) < boundary, "too slow to test before the boundary"
        while datetime.now(UTC) < boundary + timedelta(seconds=0.2):
            time.sleep(0.1)
        chat(client, 40)  # a new period
        with pytest.raises(openai.RateLimitError) as err:
            chat(client, 40)
        assert f"resets at {boundary + timedelta(days=1):%Y-%m-%dT%H:%M:%SZ}" in err.value.message


def billing(proxy: MeterProxy, catalog: Path, *args: str) -> str:
    result = CliRunner().invoke(
        billing_cli, ["--db", str(proxy.db), "--catalog", str(catalog), *args]
    )
    assert result.exit_code == 0, result.output
    return result.output


def prepaid_catalog(tmp_path: Path, fake_provider: FakeProvider) -> Path:
    """Alice's customer on a prepaid plan: 1.00 USD per 100 output tokens of gpt-4o."""
    return governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        entitlements=[{"feature": "gpt-out", "limit": "unlimited"}],
        prepaid=True,
        rate_cards=[
            {
                "key": "out",
                "name": "GPT output",
                "feature": "gpt-out",
                "price": {"type": "unit", "amount": "1.00", "per": 100},
            }
        ],
    )


def test_prepaid_plan_blocks_at_zero_balance_until_credits_are_granted(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory
) -> None:
    """1.00 USD per 100 output tokens, 1.00 USD of credit: 40 + 40 + 40 (the call that
    uses the balance up is the last one allowed), refused, then a grant lets calls in."""
    catalog = prepaid_catalog(tmp_path, fake_provider)
    proxy = start_proxy(catalog=catalog, options={"meter_governance_refresh": "0.2"})
    with openai_client(proxy, fake_provider, KEYS["alice"]) as client:
        with pytest.raises(openai.RateLimitError) as err:  # no credit at all yet
            chat(client, 40)
        assert "prepaid credit of customer 'acme' is used up" in err.value.message
        billing(proxy, catalog, "credits", "grant", "--customer", "acme", "--amount", "1.00")
        deadline = time.monotonic() + 60  # generous: a loaded machine slows every read
        while True:  # the proxy re-reads balances within its refresh interval
            try:
                chat(client, 40)
                break
            except openai.RateLimitError:
                assert time.monotonic() < deadline, "the grant never reached the proxy"
                time.sleep(0.1)
        chat(client, 40)
        chat(client, 40)  # 0.80 spent: allowed, and it spends 1.20
        with pytest.raises(openai.RateLimitError):
            chat(client, 40)
    rows_where(proxy, "reason IS NULL", 3)
    report = json.loads(billing(proxy, catalog, "entitlements", "--format", "json"))
    credit = next(r for r in report if r["type"] == "credit")
    assert (credit["limit"], credit["used"], credit["remaining"]) == ("1.00", "1.20", "0.00")
    usage = json.loads(
        billing(proxy, catalog, "usage", "--group-by", "refused", "--format", "json")
    )
    by_reason = {u["refused"]: (u["output"], u["events"]) for u in usage}
    assert set(by_reason) == {None, "credits"} and by_reason[None] == (120, 3)
    # Refused before the grant reached the proxy (once or more), and after it was used up.
    assert by_reason["credits"][0] == 0 and by_reason["credits"][1] >= 2
    metered = next(r for r in report if r["type"] == "metered")
    assert (metered["used"], metered["limit"], metered["feature"]) == (120, "unlimited", "gpt-out")


def test_prepaid_credit_held_by_a_call_in_flight_is_a_retry_not_used_up(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory
) -> None:
    """1.00 USD per 100 output tokens, 1.00 USD of credit, nothing used: a call in flight
    reserving 100 tokens holds the whole credit. The next call was refused as "used up",
    with the reserved 1.00 as the "period cost so far" and ``x-should-retry: false``; it
    is a retry now, as at a hard limit, and used and held are told apart."""
    catalog = prepaid_catalog(tmp_path, fake_provider)
    proxy = start_proxy(catalog=catalog, options={"meter_governance_refresh": "0.2"})
    billing(proxy, catalog, "credits", "grant", "--customer", "acme", "--amount", "1.00")
    with openai_client(proxy, fake_provider, KEYS["alice"]) as client:
        deadline = time.monotonic() + 60
        while True:  # a call that costs nothing, once the proxy has read the grant
            try:
                chat(client, 0, max_tokens=1)
                break
            except openai.RateLimitError:
                assert time.monotonic() < deadline, "the grant never reached the proxy"
                time.sleep(0.1)
        fake_provider.reset()
        # Reserves 100 tokens (1.00) and answers 40 (0.40) only after 15 s: long enough
        # for one refused call however slow the machine, however soon the refusal comes.
        slow = threading.Thread(
            target=chat, args=(client, 40), kwargs={"max_tokens": 100, "think": 15}
        )
        slow.start()
        try:
            deadline = time.monotonic() + 10
            while not fake_provider.exchanges:  # admitted and forwarded: 1.00 is reserved
                assert time.monotonic() < deadline, "the slow call never reached the provider"
                time.sleep(0.01)
            with pytest.raises(openai.RateLimitError) as err:
                chat(client, 40)
        finally:
            slow.join()
        assert err.value.message.endswith(
            "Meterline: prepaid credit of customer 'acme': balance 1.00 USD, period cost so "
            "far 0.00 USD, the rest held by calls in flight (1.00 USD); retry in a moment."
        )
        headers = err.value.response.headers
        assert (headers["x-should-retry"], headers["retry-after"]) == ("true", "2")
        chat(client, 40)  # retried once the call in flight settled (0.40 used): admitted
    # Forwarded: the call that cost nothing, the slow one and the one retried.
    assert sorted(r["output_tokens"] for r in rows_where(proxy, "reason IS NULL", 3)) == [0, 40, 40]


@pytest.mark.parametrize("policy", ["allow", "deny"])
def test_failure_policy_when_the_store_is_unreachable(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory, policy: str
) -> None:
    """A lake whose PostgreSQL is down: 'deny' refuses governed calls (503), 'allow'
    enforces the limit on this proxy's own calls, counted from zero."""
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        entitlements=[{"feature": "gpt-out", "limit": 40}],
    )
    proxy = start_proxy(
        catalog=catalog,
        options={
            "meter_db": "ducklake:postgres:host=127.0.0.1 port=1 dbname=down user=nobody",
            "meter_governance_failure": policy,
        },
        env={"METERLINE_LAKE_DATA": str(tmp_path / "lake-data")},
    )
    with openai_client(proxy, fake_provider, KEYS["alice"]) as client:
        if policy == "deny":
            with pytest.raises(openai.InternalServerError) as err:
                chat(client, 40)
            assert err.value.status_code == 503
            assert "cannot be checked" in err.value.message
        else:
            chat(client, 40)
            with pytest.raises(openai.RateLimitError):
                chat(client, 40)
    assert "cannot read usage for limits" in proxy.log_text()


def test_allowed_models_are_decided_before_the_store_is_read(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory
) -> None:
    """A plan of boolean entitlements only: which models it grants does not depend on the
    store. Before, every call waited for the first read of the store (503 "being read",
    the walkthrough's first calls after a subscription was added; "cannot be checked"
    with ``deny`` while the store is down)."""
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        entitlements=[{"feature": "gpt-out", "type": "boolean"}],
    )
    proxy = start_proxy(
        catalog=catalog,
        options={
            "meter_db": "ducklake:postgres:host=127.0.0.1 port=1 dbname=down user=nobody",
            "meter_governance_failure": "deny",
        },
        env={"METERLINE_LAKE_DATA": str(tmp_path / "lake-data")},
    )
    fake_provider.reset()
    with openai_client(proxy, fake_provider, KEYS["alice"]) as client:
        chat(client, 5)  # granted
        with pytest.raises(openai.PermissionDeniedError) as err:
            chat(client, 5, model="o3-mini")
    assert "does not include model 'o3-mini'" in err.value.message
    assert len(fake_provider.exchanges) == 1


def test_a_stream_that_crosses_the_limit_finishes_and_counts_fully(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory
) -> None:
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        entitlements=[{"feature": "gpt-out", "limit": 50}],
    )
    proxy = start_proxy(catalog=catalog)
    with openai_client(proxy, fake_provider, KEYS["alice"]) as client:
        chat(client, 30)
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o",
                messages=MESSAGES,
                max_tokens=80,
                stream=True,
                extra_headers={"x-fake": "output=80,delay=0.01"},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == fake_provider.last().text  # the client got all of it
        with pytest.raises(openai.RateLimitError) as err:
            chat(client, 1)
    assert "(110 used)" in err.value.message
    rows = rows_where(proxy, "reason IS NULL", 2)
    assert [r["output_tokens"] for r in rows] == [30, 80]


def test_unit_grant_raises_a_hard_limit_at_the_proxy(
    tmp_path: Path, fake_provider: FakeProvider, start_proxy: ProxyFactory
) -> None:
    """Limit 80 output tokens, 40 per call: refused at 80; a grant of 40 gpt-out units lets
    one more call in (80 + 40 = 120), then refused again, naming the granted units."""
    catalog = governed_catalog(
        tmp_path / "catalog.yaml",
        fake_provider,
        ALICE,
        entitlements=[{"feature": "gpt-out", "limit": 80}],
    )
    proxy = start_proxy(catalog=catalog, options={"meter_governance_refresh": "0.2"})
    with openai_client(proxy, fake_provider, KEYS["alice"]) as client:
        chat(client, 40)
        chat(client, 40)
        with pytest.raises(openai.RateLimitError):
            chat(client, 40)
        out = billing(proxy, catalog, "credits", "grant", "--customer", "acme",
                      "--feature", "gpt-out", "--units", "40", "--reason", "goodwill")  # fmt: skip
        assert out.endswith("40 gpt-out units to acme (priority 10)\n")
        deadline = time.monotonic() + 60  # generous: a loaded machine slows every read
        while True:  # the proxy re-reads unit balances within its refresh interval
            try:
                chat(client, 40)
                break
            except openai.RateLimitError:
                assert time.monotonic() < deadline, "the grant never reached the proxy"
                time.sleep(0.1)
        with pytest.raises(openai.RateLimitError) as err:
            chat(client, 40)
        assert "limit of 80 gpt-out units per period (+40 granted) reached" in err.value.message
    rows_where(proxy, "reason IS NULL", 3)
    report = json.loads(billing(proxy, catalog, "entitlements", "--format", "json"))
    [metered] = [r for r in report if r["type"] == "metered"]
    assert (metered["limit"], metered["granted_units"], metered["used"]) == (80, 40, 120)
    assert metered["remaining"] == 0
