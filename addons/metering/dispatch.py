"""An index of mitmproxy's hook dispatch: each hook goes only to the addons that have it.

For every hook of every flow (four for a buffered call, and an ``update`` after each),
mitmproxy's ``AddonManager.trigger_event`` walks its whole chain of ~35 addons, and for
each one enters a context manager, starts a coroutine and two generators and looks the
hook up, whether or not that addon has it (no addon of mitmdump has ``update``). That
walk is ~550 µs of CPU per flow with warm caches (``bench/hook_dispatch.py``), a fifth of
a plain mitmdump's latency for a small JSON call, and every call through the proxy pays
it with or without the meter.

:class:`HookIndex` replaces ``trigger_event`` on one addon manager (the running
master's; the class is untouched) with a lookup: per hook name, the hook's callables
grouped by the top-level addon they belong to, in chain order, built on the hook's
first use. What mitmproxy guarantees is kept: the same callables in the same order; an
exception in one is logged by mitmproxy's own ``safecall`` and skips the rest of that
top-level addon's tree only; ``AddonHalt`` stops the event; ``OptionsError`` propagates;
awaitable results are awaited. A hook attribute that is neither callable nor a module
(mitmproxy logs an error for it on every event) falls back to mitmproxy's own walk.

The index is dropped whenever the manager's tree changes through its API, which is how
mitmproxy's script loader changes it (loading, reloading and unloading a script):
``register``, ``add``, ``remove`` and ``clear``. Not seen: an addon that grows a hook,
or a sub-addon, later without the manager; ``--set meter_fast_dispatch=false`` keeps
mitmproxy's own dispatch for such a set-up.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable
from typing import Any

from mitmproxy import exceptions, hooks
from mitmproxy.addonmanager import AddonManager, safecall, traverse

Group = tuple[Callable[..., Any], ...]
"""The callables of one hook under one top-level addon, in traversal order."""

_CHANGES_TREE = ("register", "add", "remove", "clear")


class HookIndex:
    """The hook index of one :class:`~mitmproxy.addonmanager.AddonManager`."""

    def __init__(self, manager: AddonManager) -> None:
        self._manager = manager
        self._groups: dict[str, tuple[Group, ...] | None] = {}
        self._installed: dict[str, Callable[..., Any]] = {}

    @property
    def installed(self) -> bool:
        return bool(self._installed)

    def install(self) -> bool:
        """Take over the manager's ``trigger_event``; False if something else already has."""
        manager = vars(self._manager)
        if self._installed or "trigger_event" in manager:
            return False
        for name in _CHANGES_TREE:
            self._installed[name] = self._forgetting(getattr(self._manager, name))
        self._installed["trigger_event"] = self.trigger_event
        manager.update(self._installed)
        return True

    def uninstall(self) -> None:
        """Give the manager its own methods back (those still ours)."""
        manager = vars(self._manager)
        for name, ours in self._installed.items():
            if manager.get(name) is ours:
                del manager[name]
        self._installed.clear()
        self._groups.clear()

    def _forgetting(self, change: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(change)
        def changed(*args: Any, **kwargs: Any) -> Any:
            try:
                return change(*args, **kwargs)
            finally:
                self._groups.clear()

        return changed

    def _index(self, name: str) -> tuple[Group, ...] | None:
        """The hook's callables per top-level addon; None to leave it to mitmproxy."""
        groups = []
        for addon in self._manager.chain:
            group = []
            for a in traverse([addon]):
                func = getattr(a, name, None)
                if not func or isinstance(func, types.ModuleType):
                    continue  # mitmproxy skips a module named like a hook too
                if not callable(func):
                    return None  # mitmproxy logs its error on every event: leave it that
                group.append(func)
            if group:
                groups.append(tuple(group))
        return tuple(groups)

    async def trigger_event(self, event: hooks.Hook) -> None:
        """mitmproxy's ``AddonManager.trigger_event``, through the index."""
        try:
            groups = self._groups[event.name]
        except KeyError:
            groups = self._groups[event.name] = self._index(event.name)
        if groups is None:
            await AddonManager.trigger_event(self._manager, event)
            return
        if not groups:
            return
        args = event.args()
        for group in groups:
            try:
                for func in group:
                    result = func(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
            except exceptions.AddonHalt:
                return
            except Exception:
                with safecall():  # mitmproxy's own handling: OptionsError goes on, others logged
                    raise
