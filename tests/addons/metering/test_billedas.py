"""Models a provider bills calls as, per model they name: learnt, bounded."""

from __future__ import annotations

from addons.metering.billedas import BilledAs


def test_learns_other_names_only_once_each() -> None:
    b = BilledAs()
    assert b.get("azure", "prod-chat") == ()
    assert b.learn("azure", "prod-chat", "gpt-4o-2024-08-06")
    assert not b.learn("azure", "prod-chat", "gpt-4o-2024-08-06")
    assert not b.learn("azure", "gpt-4o", "gpt-4o")  # the same name: nothing to learn
    assert not b.learn("azure", "", "gpt-4o")  # no name asked: nothing to key it by
    assert b.learn("azure", "prod-chat", "gpt-4o-2024-11-20")  # a new snapshot behind it
    assert b.get("azure", "prod-chat") == ("gpt-4o-2024-08-06", "gpt-4o-2024-11-20")
    assert b.get("openai", "prod-chat") == ()  # per provider


def test_memory_is_bounded() -> None:
    b = BilledAs(max_names=3, per_name=2)
    for n in range(5):
        b.learn("p", f"alias-{n}", "m")
    assert len(b) == 3 and b.get("p", "alias-0") == () and b.get("p", "alias-4") == ("m",)
    for n in range(4):
        b.learn("p", "alias-4", f"m{n}")
    assert b.get("p", "alias-4") == ("m2", "m3")  # the latest
