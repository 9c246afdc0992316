"""Run the fake provider (tests/support/upstream.py) in its own process for the benchmarks.

Prints one JSON line with its ports, then serves until stdin closes. Exchanges are not
kept (a long benchmark would otherwise grow this process, not the proxy under test).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.upstream import FLAVORS, FakeProvider  # noqa: E402


class _NoRecord(list):  # type: ignore[type-arg]
    def append(self, item: object) -> None:
        pass


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, FakeProvider(Path(tmp), seed=1) as upstream:
        upstream.exchanges = _NoRecord()
        ports = {
            "plain": {f: upstream.ports[f] for f in FLAVORS},
            "tls": {f: upstream.tls_ports[f] for f in FLAVORS},
            "providers": upstream.catalog_providers(),
        }
        print(json.dumps(ports), flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
