"""A real, throwaway PostgreSQL server on 127.0.0.1 for the DuckLake tests.

Uses the PostgreSQL server binaries installed on the machine (``/usr/lib/postgresql/*/bin``).
PostgreSQL refuses to run as root, so as root the cluster is owned by the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql")
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start PostgreSQL in a fresh directory; yields a libpq conninfo string; stops it after.

    The directory is made outside pytest's tmp tree, whose 0700 root-owned parents the
    ``postgres`` user could not enter.
    """
    bindir = _bin_dir()
    workdir = Path(tempfile.mkdtemp(prefix="meterline-pg-"))
    workdir.chmod(0o755)
    data = workdir / "pgdata"
    data.mkdir(parents=True)
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres")
        shutil.chown(data, "postgres")
    subprocess.run(
        _as_owner([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]),
        check=True,
        capture_output=True,
    )
    port = free_port()
    log = workdir / "postgres.log"
    log_file = log.open("wb")
    proc = subprocess.Popen(
        _as_owner(
            [
                str(bindir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(workdir),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ]
        ),  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=log_file,
    )
    log_file.close()  # the server holds its own descriptor
    try:
        deadline = time.monotonic() + 30
        while True:
            ready = subprocess.run(
                [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                capture_output=True,
            )
            if ready.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield f"dbname=postgres host=127.0.0.1 port={port} user=postgres"
    finally:
        _stop(proc, data)
        shutil.rmtree(workdir, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes], data: Path) -> None:
    """Stop the server (a fast shutdown: open sessions are ended), killed if it has not
    stopped in 20 s.

    A test may have stopped the server's processes to make it hang (SIGSTOP), and may
    have failed before continuing them. As root the server also runs under ``runuser``,
    which stops itself when its child stops (job control) and then waits to be continued:
    a SIGTERM to it was never passed on, it was killed 20 s later, and the server ran on,
    orphaned. So the postmaster is signalled by its own pid, and ``runuser``, the
    postmaster and its children are continued until ``runuser`` has seen it exit."""
    try:
        postmaster: int | None = _postmaster(data)
    except (OSError, ValueError, IndexError):  # not started, or already gone
        postmaster = None
    deadline = time.monotonic() + 20
    while True:
        proc.send_signal(signal.SIGCONT)
        if postmaster is None:
            proc.terminate()
        else:
            signal_each([postmaster, *_children(postmaster)], signal.SIGCONT)
            signal_each([postmaster], signal.SIGINT)
        try:
            proc.wait(timeout=0.5)
            return
        except subprocess.TimeoutExpired:
            if time.monotonic() > deadline:
                break
    proc.kill()
    proc.wait()
    if postmaster is not None:
        signal_each([postmaster], signal.SIGKILL)


def _postmaster(data: Path) -> int:
    """The postmaster's pid, from the data directory's ``postmaster.pid``."""
    return int((data / "postmaster.pid").read_text().split()[0])


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from ``/proc``)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def server_pids(conninfo: str) -> list[int]:
    """The server's processes: its postmaster first, then the postmaster's children."""
    data = subprocess.run(
        [str(_bin_dir() / "psql"), conninfo, "-Atc", "SHOW data_directory"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    postmaster = _postmaster(Path(data))
    return [postmaster, *_children(postmaster)]


def signal_each(pids: list[int], sig: signal.Signals) -> None:
    """Send ``sig`` to each of ``pids`` that still runs: a backend listed a moment ago
    (the one that answered :func:`server_pids`' query) may be gone (CI met both a
    ``ProcessLookupError`` there and one for a backend exiting as its server stopped)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def create_database(conninfo: str, name: str) -> str:
    """Create database ``name`` on the server of ``conninfo``; returns its conninfo."""
    subprocess.run(
        [str(_bin_dir() / "psql"), conninfo, "-q", "-c", f'CREATE DATABASE "{name}"'],
        check=True,
        capture_output=True,
    )
    return conninfo.replace("dbname=postgres", f"dbname={name}")
