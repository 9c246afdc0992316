"""The hook index against mitmproxy's own dispatch, on a real ``DumpMaster``.

Each scenario runs twice, once through mitmproxy's ``trigger_event`` and once through
:class:`HookIndex`, and the two must agree call for call and log line for log line:
nested addons, an async hook, a hook that raises (only the rest of its own addon's tree
is skipped), ``AddonHalt``, a module and a non-callable named like a hook, addons added
and removed between flows, and scripts loaded, reloaded and dropped by mitmproxy's own
script loader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import types
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import exceptions, options
from mitmproxy.addonmanager import AddonManager
from mitmproxy.proxy.layers import http as http_layer

with warnings.catch_warnings():
    # mitmproxy.addons imports ldap3, which trips a pyasn1 DeprecationWarning on import.
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy.test import tflow
    from mitmproxy.tools.dump import DumpMaster

from addons.metering.dispatch import HookIndex

Calls = list[tuple[str, str]]
FLOW_HOOKS = (
    http_layer.HttpRequestHeadersHook,
    http_layer.HttpRequestHook,
    http_layer.HttpResponseHeadersHook,
    http_layer.HttpResponseHook,
)


class Recorder:
    """An addon that records the flow hooks it is handed, with optional children."""

    def __init__(self, name: str, calls: Calls, children: tuple[Any, ...] = ()) -> None:
        self.name = name
        self.calls = calls
        self.addons = list(children)

    def __repr__(self) -> str:  # mitmproxy's error lines name the addon
        return f"<{self.name}>"

    def requestheaders(self, flow: Any) -> None:
        self.calls.append((self.name, "requestheaders"))

    def request(self, flow: Any) -> None:
        self.calls.append((self.name, "request"))

    def responseheaders(self, flow: Any) -> None:
        self.calls.append((self.name, "responseheaders"))

    def response(self, flow: Any) -> None:
        self.calls.append((self.name, "response"))


class Failing(Recorder):
    def request(self, flow: Any) -> None:
        self.calls.append((self.name, "request"))
        raise ValueError(f"{self.name} failed")


class Halting(Recorder):
    def responseheaders(self, flow: Any) -> None:
        self.calls.append((self.name, "responseheaders"))
        raise exceptions.AddonHalt


class Awaiting(Recorder):
    async def response(self, flow: Any) -> None:
        await asyncio.sleep(0)
        self.calls.append((self.name, "response"))


class ModuleNamedLikeAHook(Recorder):
    requestheaders = logging  # type: ignore[assignment]  # "from x import log" in a script


class NotCallable(Recorder):
    update = 5  # type: ignore[assignment]  # mitmproxy logs an error for it on every event


@contextlib.asynccontextmanager
async def _master(indexed: bool) -> AsyncIterator[DumpMaster]:
    """A real mitmdump master (no proxy server started), through the index or not;
    shut down after (its log handlers hold this event loop)."""
    master = DumpMaster(options.Options(), with_termlog=False, with_dumper=False)
    if indexed:
        assert HookIndex(master.addons).install()
    try:
        yield master
    finally:
        await master.done()


async def _flow(master: DumpMaster) -> None:
    flow = tflow.tflow(resp=True)
    for hook in FLOW_HOOKS:
        await master.addons.handle_lifecycle(hook(flow))


def _addon_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.levelname} {r.getMessage().splitlines()[0]}"
        for r in caplog.records
        if r.name == "mitmproxy.addonmanager"
    ]


async def _tree_scenario(indexed: bool) -> Calls:
    calls: Calls = []
    async with _master(indexed) as master:
        await _tree_flows(master, calls)
    return calls


async def _tree_flows(master: DumpMaster, calls: Calls) -> None:
    first = Recorder("first", calls)
    master.addons.add(first)
    master.addons.add(
        Recorder("parent", calls, (Failing("failing-child", calls), Recorder("sibling", calls)))
    )
    master.addons.add(Awaiting("awaiting", calls), ModuleNamedLikeAHook("module-attr", calls))
    master.addons.add(Halting("halting", calls), Recorder("after-halt", calls))
    await _flow(master)
    calls.append(("--", "an addon added"))
    master.addons.add(Recorder("late", calls))
    await _flow(master)
    calls.append(("--", "one removed"))
    master.addons.remove(first)
    await _flow(master)


def test_the_index_calls_what_mitmproxy_calls_in_its_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    walked = asyncio.run(_tree_scenario(indexed=False))
    walked_log = _addon_log(caplog)
    caplog.clear()
    indexed = asyncio.run(_tree_scenario(indexed=True))
    assert indexed == walked
    assert _addon_log(caplog) == walked_log
    one_flow = walked[: walked.index(("--", "an addon added"))]
    # a failing child skips its siblings for that hook only; a halt ends the hook there
    assert ("sibling", "request") not in one_flow
    assert ("sibling", "response") in one_flow
    assert ("after-halt", "responseheaders") not in one_flow
    assert ("after-halt", "response") in one_flow
    assert ("module-attr", "requestheaders") not in one_flow
    assert ("awaiting", "response") in one_flow
    assert walked_log == ["ERROR Addon error: failing-child failed"] * 3
    assert ("late", "response") in walked and ("first", "request") not in walked[-12:]


async def _not_callable_scenario(indexed: bool) -> Calls:
    calls: Calls = []
    async with _master(indexed) as master:
        master.addons.add(NotCallable("odd", calls))
        await _flow(master)
    return calls


def test_a_hook_that_is_not_callable_is_left_to_mitmproxy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    walked = asyncio.run(_not_callable_scenario(indexed=False))
    walked_log = _addon_log(caplog)
    caplog.clear()
    assert asyncio.run(_not_callable_scenario(indexed=True)) == walked
    assert _addon_log(caplog) == walked_log
    assert len(walked_log) == 4 and "not callable" in walked_log[0]


SCRIPT = """
from pathlib import Path
LOG = Path({log!r})

class Seen:
    def request(self, flow):
        with LOG.open("a") as f:
            f.write("{version} request\\n")

addons = [Seen()]
"""


async def _script_scenario(tmp_path: Path, indexed: bool) -> list[str]:
    log = tmp_path / f"seen-{indexed}.log"
    script = tmp_path / f"recorder_{indexed}.py"
    async with _master(indexed) as master:
        loader = master.addons.get("scriptloader")
        script.write_text(SCRIPT.format(log=str(log), version="v1"))
        master.options.update(scripts=[str(script)])  # mitmproxy's loader registers it
        while not loader.addons[0].addons:  # its watcher task loads the file
            await asyncio.sleep(0.01)
        await _flow(master)
        script.write_text(SCRIPT.format(log=str(log), version="v2"))
        loader.addons[0].loadscript()  # what the watcher does when the file changes
        await _flow(master)
        master.options.update(scripts=[])  # dropped
        await _flow(master)
    return log.read_text().splitlines()


def test_scripts_loaded_reloaded_and_dropped_are_seen(tmp_path: Path) -> None:
    walked = asyncio.run(_script_scenario(tmp_path, indexed=False))
    assert walked == ["v1 request", "v2 request"]
    assert asyncio.run(_script_scenario(tmp_path, indexed=True)) == walked


def test_install_once_and_uninstall_gives_mitmproxy_its_methods_back() -> None:
    async def scenario() -> Calls:
        calls: Calls = []
        async with _master(indexed=False) as master:
            index = HookIndex(master.addons)
            assert index.install() and index.installed
            assert not HookIndex(master.addons).install()  # one index per manager
            assert master.addons.trigger_event == index.trigger_event
            index.uninstall()
            assert not index.installed
            assert not {"trigger_event", "register", "remove"} & set(vars(master.addons))
            assert isinstance(master.addons, AddonManager)
            master.addons.add(Recorder("after", calls))  # mitmproxy's walk sees it
            await _flow(master)
        return calls

    assert asyncio.run(scenario()) == [
        ("after", hook) for hook in ("requestheaders", "request", "responseheaders", "response")
    ]


def test_options_error_still_propagates() -> None:
    class Refusing:
        def request(self, flow: Any) -> None:
            raise exceptions.OptionsError("refused")

    async def scenario() -> None:
        async with _master(indexed=True) as master:
            master.addons.add(Refusing())
            await master.addons.handle_lifecycle(http_layer.HttpRequestHook(tflow.tflow()))

    with pytest.raises(exceptions.OptionsError, match="refused"):
        asyncio.run(scenario())


def test_a_hook_no_addon_has_is_no_walk_at_all() -> None:
    """An ``update`` (after every flow hook) that no addon has is no walk at all."""

    async def scenario() -> tuple[Any, ...] | None:
        async with _master(indexed=False) as master:
            index = HookIndex(master.addons)
            index.install()
            master.addons.add(types.SimpleNamespace(name="bare"))
            await _flow(master)
            return index._groups["update"]

    assert asyncio.run(scenario()) == ()
