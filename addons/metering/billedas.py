"""Which models a provider bills calls as, per model the calls name: learned, bounded.

A provider may answer a call under another name than the one it was sent with: an Azure
deployment (``prod-chat``) is billed as its model (``gpt-4o-2024-08-06``), OpenAI bills
``gpt-4o`` as its current snapshot. Limits are written against the billed names (a
feature's model glob), and a call is settled under the billed name, but admitted before
it is sent, under the name it asks for: a limit on ``gpt-4o-2024*`` never refused a call
naming ``prod-chat`` (10 of 10 admitted, 400 tokens against 100).

:class:`BilledAs` remembers, from calls that ended, each (provider, asked model) ->
the billed models seen for it; admission then applies the limits of all of them. The
first call of a name not seen yet is admitted on its own name only (docs/governance.md
states the bound). Memory is bounded: at most :data:`MAX_NAMES` asked names (the oldest
learned is forgotten first), each with its :data:`PER_NAME` latest billed models.
"""

from __future__ import annotations

MAX_NAMES = 1024
PER_NAME = 8


class BilledAs:
    def __init__(self, max_names: int = MAX_NAMES, per_name: int = PER_NAME) -> None:
        self.max_names = max_names
        self.per_name = per_name
        self._seen: dict[tuple[str, str], tuple[str, ...]] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def get(self, provider: str, asked: str) -> tuple[str, ...]:
        """The other models calls naming ``asked`` were billed as (empty: none seen)."""
        return self._seen.get((provider, asked), ())

    def learn(self, provider: str, asked: str, billed: str) -> bool:
        """Note that a call naming ``asked`` was billed as ``billed``; True when new."""
        if not asked or not billed or billed == asked:
            return False
        key = (provider, asked)
        known = self._seen.pop(key, ())
        if billed in known:
            self._seen[key] = known
            return False
        if len(self._seen) >= self.max_names:
            del self._seen[next(iter(self._seen))]  # the name learned longest ago
        self._seen[key] = (*known, billed)[-self.per_name :]
        return True
