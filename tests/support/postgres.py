"""A real, throwaway PostgreSQL server on 127.0.0.1 for the DuckLake tests.

Uses the PostgreSQL server binaries installed on the machine (``/usr/lib/postgresql/*/bin``).
PostgreSQL refuses to run as root, so as root the cluster is owned by the ``postgres`` user.
"""

from __future__ import annotations

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

    The postmaster is signalled by its own pid, not through ``runuser`` (the server's
    parent as root): ``runuser`` stops itself when its child stops (job control) and is
    not continued with it, so after a test that stopped the server to make it hang
    (SIGSTOP, then SIGCONT to the server's processes) it never passed a SIGTERM on; the
    fixture killed it 20 s later and the server ran on, orphaned. It is continued too,
    so that it can see its child exit and exit itself."""
    proc.send_signal(signal.SIGCONT)
    try:
        os.kill(int((data / "postmaster.pid").read_text().split()[0]), signal.SIGINT)
    except (OSError, ValueError, IndexError):  # not started, or already gone
        proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def create_database(conninfo: str, name: str) -> str:
    """Create database ``name`` on the server of ``conninfo``; returns its conninfo."""
    subprocess.run(
        [str(_bin_dir() / "psql"), conninfo, "-q", "-c", f'CREATE DATABASE "{name}"'],
        check=True,
        capture_output=True,
    )
    return conninfo.replace("dbname=postgres", f"dbname={name}")
