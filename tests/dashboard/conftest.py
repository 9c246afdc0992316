"""Fixtures: a seeded store, the real ``billing dashboard`` serving it, a real Chromium.

``dashboard`` runs the CLI as a subprocess (``billing dashboard --port 0``) and reads the
URL it prints. ``browser`` is Playwright driving the distribution's Chromium
(``apt-get install chromium``; ``.ci/run`` installs it): Playwright never downloads one.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.billing.events import Setup, write_catalog
from tests.dashboard.seed import seeded

BILLING = [sys.executable, "-c", "from billing.cli import main; main()"]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[str]

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def json(self, path: str) -> Any:
        status, body = self.get(path)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)


def start_dashboard(s: Setup, *extra: str, env: dict[str, str] | None = None) -> Server:
    """``billing dashboard --port 0 EXTRA`` on the store; its stderr goes to a file beside
    the catalog (in the test's directory: a lake locator names none)."""
    with open(s.catalog_path.parent / "dashboard.stderr", "ab") as log:
        proc = subprocess.Popen(
            [*BILLING, "--db", str(s.db), "--catalog", str(s.catalog_path), "dashboard",
             "--port", "0", *extra],
            stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, **(env or {})},
        )  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if line.startswith("Serving on "):
                return Server(line.split()[2].rstrip("/"), proc)
        if proc.poll() is not None:
            break
    stop(Server("", proc))
    log_text = (s.catalog_path.parent / "dashboard.stderr").read_text(errors="replace")
    raise AssertionError(f"dashboard did not start: {log_text[-2000:]}")


def stop(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
    if server.proc.stdout is not None:
        server.proc.stdout.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return seeded(tmp_path_factory.mktemp("dashboard"))


@pytest.fixture(scope="module")
def dashboard(store: Setup) -> Iterator[Server]:
    server = start_dashboard(store)
    yield server
    stop(server)


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Chromium is not installed: apt-get install -y chromium (see .ci/run)")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where a test writes its screenshots (kept with pytest's tmp dirs for people to see)."""
    path = tmp_path / "screenshots"
    path.mkdir()
    return path


def variant(store: Setup, tmp: Path, catalog: str) -> Setup:
    """A copy of the seeded store under ``tmp`` with another catalog (the tests that
    change the store or the catalog leave the shared seed alone)."""
    db = tmp / "meterline.duckdb"
    shutil.copy(store.db, db)
    return Setup(db, write_catalog(tmp, catalog))


def record(pg: Any, message: Any) -> None:
    if message.type in ("error", "warning"):
        pg.problems.append(f"{message.type}: {message.text}")


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh 1280x900 page; ``page.problems`` collects console errors and warnings."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.problems = []
    pg.on("console", lambda m: record(pg, m))
    pg.on("pageerror", lambda err: pg.problems.append(f"pageerror: {err}"))
    yield pg
    context.close()


def load(pg: Any, server: Server, path: str, shots: Path, name: str) -> None:
    """Open ``path``, wait for its charts, and leave a full-page screenshot ``name``."""
    response = pg.goto(server.url + path)
    assert response.status == 200, path
    pg.evaluate("() => window.meterlineReady || null")
    pg.screenshot(path=str(shots / f"{name}.png"), full_page=True)
