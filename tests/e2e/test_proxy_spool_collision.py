"""Two proxies started with one spool directory: the second exits with one clear line."""

from __future__ import annotations

import subprocess

from tests.conftest import ProxyFactory


def test_second_proxy_on_the_same_spool_exits_with_one_line(start_proxy: ProxyFactory) -> None:
    first = start_proxy()
    cmd = first.command()  # the same options: the same spool directory
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=first.workdir)
    out = second.stdout + second.stderr
    assert second.returncode != 0
    assert "spool already in use by another proxy" in out
    assert "--set meter_spool=DIR" in out
    assert "Traceback" not in out
    assert first.process is not None and first.process.poll() is None  # the first runs on
