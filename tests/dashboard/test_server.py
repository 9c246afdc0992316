"""The HTTP server: what ``--verbose`` logs (never the token), and the token's schemes."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import duckdb
import pytest

from billing.dashboard.server import COOKIE, cookie_value, redact, redact_path
from tests.billing.events import Setup
from tests.dashboard.conftest import BILLING, Server, start_dashboard, stop, variant
from tests.dashboard.seed import CATALOG

TOKEN = "s3cret tok;en"  # a space and a ';': logged encoded, still not logged


@pytest.fixture
def guarded(store: Setup, tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    """``billing dashboard --verbose`` with a token; its stderr file."""
    s = variant(store, tmp_path, CATALOG)
    server = start_dashboard(s, "--verbose", env={"METERLINE_DASHBOARD_TOKEN": TOKEN})
    yield server, tmp_path / "dashboard.stderr"
    stop(server)


def raw_request(server: Server, request_line: str) -> bytes:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"{request_line}\r\nHost: localhost\r\n\r\n".encode())
        return sock.recv(65536)


def test_verbose_logs_never_hold_the_token(guarded: tuple[Server, Path]) -> None:
    server, log = guarded
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    conn = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=30)
    conn.request("GET", f"/customers?token={quote(TOKEN)}&at=2026-01-20")
    assert conn.getresponse().status == 302  # logged in: the cookie is set
    conn.close()
    assert server.get("/usage.json", bearer)[0] == 200
    # a wrong token in the URL of a request the app refuses: logged, redacted
    status, _ = server.get(
        f"/customers/alpha?at=9999-12-31T23:59:59&token={quote(TOKEN[:-1])}", bearer
    )
    assert status == 400
    # a request line the server cannot parse is logged as it came
    assert b"Error code: 400" in raw_request(server, f"GET /?token={quote(TOKEN)} HTTP/1.1 junk")
    stop(server)
    text = log.read_text(encoding="utf-8")
    assert "GET /customers?token=[redacted]&at=2026-01-20 HTTP/1.1" in text
    assert "GET /customers/alpha?at=9999-12-31T23%3A59%3A59&token=[redacted] HTTP/1.1" in text
    assert "Bad request version" in text and "GET /?token=[redacted] HTTP/1.1 junk" in text
    for secret in (TOKEN, quote(TOKEN), TOKEN[:-1], quote(TOKEN[:-1]), "s3cret"):
        assert secret not in text, secret


def test_the_token_cookie_counts_beside_cookies_of_other_local_apps(
    guarded: tuple[Server, Path],
) -> None:
    """Cookies on 127.0.0.1 are shared by every port: one another app set that the
    standard library's parser refuses must not log the dashboard out."""
    server, _ = guarded
    ours = f"{COOKIE}={cookie_value(TOKEN)}"
    for others in ('prefs={"a":1}', "theme=dark mode", "a=b"):
        assert server.get("/usage.json", {"Cookie": f"{others}; {ours}"})[0] == 200, others
        assert server.get("/usage.json", {"Cookie": f"{ours}; {others}"})[0] == 200, others
    assert server.get("/usage.json", {"Cookie": 'prefs={"a":1}'})[0] == 401
    assert server.get("/usage.json", {"Cookie": f"{COOKIE}=wrong"})[0] == 401


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/?token=abc", "/?token=[redacted]"),
        ("/usage?from=2026-01-01&token=a%20b&to=x", "/usage?from=2026-01-01&token=[redacted]&to=x"),
        ("/usage?from=2026-01-01", "/usage?from=2026-01-01"),
        ("/usage", "/usage"),
        # An API key pasted into the key filter (before: logged, and echoed in the 400).
        ("/usage.json?key=sk-PROBE-alice-0123456789", "/usage.json?key=[redacted]"),
        ("/usage?key=sha256:" + "ab" * 32, "/usage?key=sha256:" + "ab" * 32),
    ],
)
def test_redact_path(text: str, expected: str) -> None:
    assert redact_path(text) == expected


def test_redact_any_line() -> None:
    line = "code 400, message Bad request version ('GET /x?a=1&TOKEN=abc;token=d HTTP/1.1 z')"
    assert redact(line, None) == (
        "code 400, message Bad request version "
        "('GET /x?a=1&TOKEN=[redacted];token=[redacted] HTTP/1.1 z')"
    )
    assert redact("Cookie: meterline_token=a%20b and a b", "a b") == (
        "Cookie: meterline_token=[redacted] and [redacted]"
    )


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(guarded: tuple[Server, Path], scheme: str) -> None:
    server, _ = guarded
    assert server.get("/customers.json", {"Authorization": f"{scheme} {TOKEN}"})[0] == 200
    assert server.get("/customers.json", {"Authorization": f"{scheme} wrong"})[0] == 401
    assert server.get("/customers.json", {"Authorization": f"Basic {TOKEN}"})[0] == 401


def _hold_write_lock(db: Path) -> subprocess.Popen[str]:
    """Another process holding the store's DuckDB write lock until killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         f"import duckdb, time; c = duckdb.connect({str(db)!r}); print('locked', flush=True); "
         "time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_locked_store_is_503_with_retry_after(store: Setup, tmp_path: Path) -> None:
    """Another process writing the store is no fault of the request (it was a 400): the
    page says the store is busy, and when to try again."""
    s = variant(store, tmp_path, CATALOG)
    server = start_dashboard(s)
    holder = _hold_write_lock(s.db)
    try:
        for path, kind in (("/usage.json", "application/json"), ("/usage", "text/html")):
            try:
                urllib.request.urlopen(server.url + path, timeout=60)
                raise AssertionError(f"{path}: answered although the store is locked")
            except urllib.error.HTTPError as e:
                status, headers, body = e.code, e.headers, e.read().decode()
            assert status == 503, (path, body[:300])
            assert headers["Retry-After"] == "5"
            assert headers["Content-Type"].startswith(kind)
            assert "the store is busy: another process holds its write lock" in body
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    try:
        assert server.get("/usage.json")[0] == 200  # let go: served again
    finally:
        stop(server)


def test_an_internal_error_is_logged_with_its_traceback_without_verbose(
    store: Setup, tmp_path: Path
) -> None:
    """A 500 is a bug to report: its traceback is logged though access lines are not
    (without ``--verbose``), and never with the token."""
    s = variant(store, tmp_path, CATALOG)
    server = start_dashboard(s, env={"METERLINE_DASHBOARD_TOKEN": TOKEN})
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    try:
        assert server.get("/customers.json", bearer)[0] == 200
        with duckdb.connect(str(s.db)) as con:  # a store this release cannot read
            con.execute("ALTER TABLE usage_events RENAME TO usage_events_gone")
        assert server.get(f"/usage.json?from=2026-01-01&x={quote(TOKEN)}", bearer)[0] == 500
    finally:
        stop(server)
    text = (tmp_path / "dashboard.stderr").read_text(encoding="utf-8")
    assert "internal error answering /usage.json?from=2026-01-01&x=[redacted]" in text
    assert "Traceback (most recent call last):" in text and "usage_events" in text
    assert "/customers" not in text  # no access lines without --verbose
    for secret in (TOKEN, quote(TOKEN), "s3cret"):
        assert secret not in text, secret


def test_a_dashboard_started_on_a_locked_store_says_it_waits_and_refuses_connections(
    store: Setup, tmp_path: Path
) -> None:
    """Started while another process holds the store's lock, the command sat silent for
    up to 30 s with its port taking connections it never answered. It says it waits (as
    every command does, after 2 s), refuses connections until the store is ready, then
    serves. The holder lets go only once the line is seen: no timing assumed."""
    s = variant(store, tmp_path, CATALOG)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
         "sys.stdin.readline()",
         str(s.db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdin is not None and holder.stdout is not None
    assert holder.stdout.readline() == "held\n"
    with socket.socket() as probe:  # a free port, to try before the command says where
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = subprocess.Popen(
        [*BILLING, "--db", str(s.db), "--catalog", str(s.catalog_path), "dashboard",
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    server = Server(f"http://127.0.0.1:{port}", command)
    try:
        assert command.stderr is not None and command.stdout is not None
        waiting = command.stderr.readline()  # blocks until the command says it waits
        assert waiting.startswith(f"waiting for the store: {s.db}: waiting up to 30 s: "), waiting
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=30).close()
        holder.stdin.write("release\n")
        holder.stdin.close()
        holder.wait(30)
        serving = command.stdout.readline()
        assert serving == f"Serving on http://127.0.0.1:{port}/ (Ctrl-C to stop)\n", serving
        assert server.get("/usage.json")[0] == 200
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        holder.stdout.close()
        stop(server)
        if command.stderr is not None:
            command.stderr.close()
