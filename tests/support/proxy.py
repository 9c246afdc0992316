"""Run the real proxy, ``mitmdump -s addons/meter.py``, as a subprocess for tests.

    proxy = MeterProxy(tmp_path, catalog=path, confdir=confdir).start()
    httpx2.Client(proxy=proxy.url, verify=str(proxy.ca_cert))
    proxy.wait_for_events(request_ids=[...])   # rows as dicts, read with a separate connection
    proxy.stop()                               # SIGTERM: the addon drains into DuckDB

It listens on a free port picked by mitmdump itself (``-p 0``; read back from its log),
with its own DuckDB file, spool and log under ``workdir``. The confdir holds the
mitmproxy CA; share one between proxies to generate the CA only once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from meterline.fingerprint import fingerprint
from meterline.store import StoreError, store

REPO = Path(__file__).resolve().parents[2]
ADDON = REPO / "addons" / "meter.py"
MITMDUMP = Path(sys.executable).with_name("mitmdump")

_LISTENING = re.compile(r"proxy (?:to \S+ )?listening at 127\.0\.0\.1:(\d+)")
"""A forward proxy, or a reverse one (``Reverse proxy to http://... listening at``)."""
_READY = "meterline: metering"


def one_provider_catalog(path: Path, name: str, port: int, consumers: dict[str, list[str]]) -> Path:
    """A catalog of one OpenAI-flavor provider at ``127.0.0.1:port`` and ``consumers``."""
    provider = {"name": name, "flavor": "openai", "hosts": [f"127.0.0.1:{port}"]}
    return write_catalog(path, [provider], consumers)


def write_catalog(
    path: Path,
    providers: list[dict[str, Any]],
    consumers: dict[str, list[str]] | None = None,
    inject: dict[str, dict[str, str]] | None = None,
) -> Path:
    """A minimal catalog: extra providers, and consumers given by their raw test keys.

    ``consumers``: name -> raw keys (stored as fingerprints). ``inject``: name ->
    {provider: ENV_VAR}.
    """
    inject = inject or {}
    doc = {
        "version": 1,
        "providers": providers,
        "consumers": [
            {
                "name": name,
                "keys": [
                    {"fingerprint": fingerprint(k), "label": f"test key {i}"}
                    for i, k in enumerate(raw)
                ],
                **({"inject": inject[name]} if name in inject else {}),
            }
            for name, raw in (consumers or {}).items()
        ],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class ProxyError(RuntimeError):
    pass


class MeterProxy:
    def __init__(
        self,
        workdir: Path,
        *,
        catalog: Path,
        confdir: Path,
        options: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        mitm_args: tuple[str, ...] = (),
        addon: bool = True,
        script: Path = ADDON,
    ) -> None:
        """``addon=False`` runs plain mitmdump with the same settings: a benchmark baseline;
        ``script`` is the addon's file (a copy of ``meter.py`` elsewhere)."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.catalog = catalog
        self.confdir = confdir
        self.db = self.workdir / "meterline.duckdb"
        self.spool = self.workdir / "spool"
        self.log_path = self.workdir / "mitmdump.log"
        self.options: dict[str, Any] = {
            "meter_db": str(self.db),
            "meter_catalog": str(catalog),
            "meter_spool": str(self.spool),
            "meter_flush_interval": 0.1,
            "meter_proxy_id": "test-proxy",
            **(options or {}),
        }
        self.env = env or {}
        self.mitm_args = mitm_args
        self.addon = addon
        self.script = script
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.last_read_error: str | None = None
        """Why the last :meth:`events` read failed (it returns no rows then)."""

    # -- lifecycle --------------------------------------------------------------------

    def command(self) -> list[str]:
        cmd = [str(MITMDUMP), "--listen-host", "127.0.0.1", "-p", "0"]
        cmd += ["--set", f"confdir={self.confdir}"]
        if "flow_detail" not in self.options:
            cmd += ["--set", "flow_detail=0"]
        if self.addon:
            cmd[1:1] = ["-s", str(self.script)]
        for name, value in self.options.items():
            if not self.addon and name.startswith("meter_"):
                continue
            text = str(value).lower() if isinstance(value, bool) else str(value)
            cmd += ["--set", f"{name}={text}"]
        return cmd + list(self.mitm_args)

    def start(self, timeout: float = 30.0) -> MeterProxy:
        env = {k: v for k, v in os.environ.items() if not k.startswith("METERLINE_")}
        env.update(self.env)
        env.pop("HTTPS_PROXY", None)
        env.pop("HTTP_PROXY", None)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=env
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            m = _LISTENING.search(text)
            if m and (_READY in text or not self.addon):
                self.port = int(m.group(1))
                return self
            if self.process.poll() is not None:
                raise ProxyError(f"mitmdump exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.02)
        self.kill()
        raise ProxyError(f"mitmdump did not listen within {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (the addon's ``done`` drains the spool), SIGKILL if it hangs."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        rc = self.process.returncode
        self.process = None
        return rc

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs (crash test)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def again(self) -> MeterProxy:
        """Another mitmdump on this one's directory, spool and settings (a restart, once
        this one stopped or was killed); not started."""
        return MeterProxy(
            self.workdir, catalog=self.catalog, confdir=self.confdir,
            options=self.options, env=self.env,
        )  # fmt: skip

    def __enter__(self) -> MeterProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- client side --------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> Path:
        """The mitmproxy CA a client must trust for HTTPS through the proxy."""
        return self.confdir / "mitmproxy-ca-cert.pem"

    # -- observation ----------------------------------------------------------------------

    def log_text(self) -> str:
        """Everything mitmdump printed since the last :meth:`start`."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as f:
            f.seek(self._log_offset)
            return f.read().decode("utf-8", "replace")

    def log(self) -> str:
        return self.log_text()[-5000:]

    def log_mark(self) -> int:
        """A position in the log; pass it as ``since`` to look only at what comes after."""
        return len(self.log_text())

    def wait_for_log(self, pattern: str, timeout: float = 5.0, since: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log_text()[since:])
            if m:
                return m
            time.sleep(0.02)
        raise AssertionError(f"{pattern!r} not in the proxy log:\n{self.log()}")

    def events(self, where: str = "TRUE", params: list[Any] | None = None) -> list[dict[str, Any]]:
        """``usage_events`` rows (as dicts), read through a separate read-only connection."""
        if not self.db.exists():
            return []
        try:
            with store(self.db, read_only=True, wait_s=10) as con:
                tables = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
                if "usage_events" not in tables:
                    return []
                cur = con.execute(
                    f"SELECT * FROM usage_events WHERE {where} ORDER BY ts", params or []
                )
                names = [d[0] for d in cur.description]
                return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        except StoreError as e:
            self.last_read_error = str(e)  # a read that fails looks like no events at all
            return []

    def only_event(self, timeout: float = 10.0) -> dict[str, Any]:
        """The one event of the store, once it arrived (fails if none comes, or more)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.events()
            if rows:
                [row] = rows
                return row
            time.sleep(0.05)
        raise AssertionError(f"no event after {timeout}s:\n{self.log()}")

    def wait_for_events(
        self, request_ids: list[str | None], timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Rows whose ``request_id`` is in ``request_ids``, once all of them arrived.

        Returns them in the order of ``request_ids``; fails if one is missing or doubled.
        """
        wanted = [r for r in request_ids if r]
        assert len(wanted) == len(request_ids), "every exchange needs an x-request-id"
        deadline = time.monotonic() + timeout
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = self.events("list_contains(?, request_id)", [wanted])
            if len(rows) >= len(wanted):
                break
            time.sleep(0.05)
        by_id: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_id.setdefault(row["request_id"], []).append(row)
        missing = [r for r in wanted if r not in by_id]
        doubled = [r for r, v in by_id.items() if len(v) > 1]
        assert not missing, f"no event for {missing} after {timeout}s:\n{self.log()}"
        assert not doubled, f"events recorded twice: {doubled}"
        return [by_id[r][0] for r in wanted]


USAGE_COLUMNS = {
    "input": "input_tokens",
    "cached_input": "cached_input_tokens",
    "cache_write": "cache_write_tokens",
    "cache_write_1h": "cache_write_1h_tokens",
    "audio_input": "audio_input_tokens",
    "output": "output_tokens",
    "audio_output": "audio_output_tokens",
    "reasoning": "reasoning_tokens",
    "web_search": "web_search_calls",
    "cached_audio_input": "cached_audio_input_tokens",
}


def row_usage(row: dict[str, Any]) -> dict[str, int]:
    """An event row's token figures, keyed like :attr:`Exchange.usage`."""
    return {name: row[column] for name, column in USAGE_COLUMNS.items()}
