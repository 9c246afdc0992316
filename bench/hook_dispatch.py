"""What mitmproxy itself spends dispatching one flow's hooks, with and without a script.

    .venv/bin/python bench/hook_dispatch.py [FLOWS]

mitmdump hands every hook of every flow to each of its ~34 built-in addons (a
coroutine, a context manager and two generators per addon and hook, and an ``update``
hook after each flow hook). This times that dispatch in-process, with no sockets, for
the four hooks of a buffered call (``requestheaders``, ``request``, ``responseheaders``,
``response``): plain mitmdump's addons; plus a script that defines no addon; plus a
script whose addon has the meter's five flow hooks, each empty; and the first and last
again through the meter's hook index (``addons/metering/dispatch.py``, which the meter
installs: ``meter_fast_dispatch``). The difference between the first and the third is
what any addon with those hooks costs before it does any work (bench/README.md, "The
cost of the durability guarantee"); the indexed rows, what the index saves.

Times are this thread's CPU with warm caches; in a live proxy each is a few times more.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import warnings
from pathlib import Path

from mitmproxy import options
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.tools.dump import DumpMaster

from addons.metering.dispatch import HookIndex

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy.test import tflow

EMPTY_HOOKS = (
    "class Empty:\n"
    + "".join(
        f"    def {hook}(self, flow):\n        pass\n"
        for hook in ("requestheaders", "request", "responseheaders", "response", "error")
    )
    + "addons = [Empty()]\n"
)
SCRIPTS = {  # name: (script text, through the hook index)
    "plain mitmdump": (None, False),
    "+ a script with no addon": ("addons = []\n", False),
    "+ an addon with five empty flow hooks": (EMPTY_HOOKS, False),
    "plain mitmdump, hook index": (None, True),
    "+ five empty flow hooks, hook index": (EMPTY_HOOKS, True),
}


async def dispatch_us(script: Path | None, indexed: bool, flows: int) -> tuple[float, int]:
    """(CPU µs to dispatch one flow's four hooks, addons in the chain)."""
    opts = options.Options()
    master = DumpMaster(opts, with_termlog=False, with_dumper=True)
    if indexed:
        HookIndex(master.addons).install()
    if script is not None:
        opts.update(scripts=[str(script)])
    opts.update(flow_detail=0)  # as bench/proxy_bench.py runs mitmdump
    await asyncio.sleep(0.1)  # the script is loaded by a task
    flow = tflow.tflow(resp=True)
    hooks = [
        http_layer.HttpRequestHeadersHook(flow),
        http_layer.HttpRequestHook(flow),
        http_layer.HttpResponseHeadersHook(flow),
        http_layer.HttpResponseHook(flow),
    ]
    for _ in range(flows // 10):  # warm-up
        for hook in hooks:
            await master.addons.handle_lifecycle(hook)
    t0 = time.thread_time()
    for _ in range(flows):
        for hook in hooks:
            await master.addons.handle_lifecycle(hook)
    used = time.thread_time() - t0
    return used / flows * 1e6, len(master.addons.chain)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("flows", nargs="?", type=int, default=20_000)
    flows = ap.parse_args().flows
    with tempfile.TemporaryDirectory() as tmp:
        base: float | None = None
        for name, (text, indexed) in SCRIPTS.items():
            script = None
            if text is not None:
                script = Path(tmp) / f"script{len(name)}.py"
                script.write_text(text)
            us, chain = asyncio.run(dispatch_us(script, indexed, flows))
            base = us if base is None else base
            print(f"{name:40} {us:7.1f} µs per flow ({us - base:+.1f}); {chain} addons")


if __name__ == "__main__":
    main()
