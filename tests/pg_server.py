"""A real PostgreSQL server for tests: Debian's binaries in a temporary data directory.

We run as root in CI, and PostgreSQL refuses to run as root, so ``initdb`` and
``postgres`` run as the ``postgres`` user (``runuser``); as any other user they
run as that user. The server listens on a free loopback port and on a unix
socket in its own directory, with password (scram) authentication over TCP for
the ``batch`` role and trust over the socket for the superuser, so tests prove
that the password really comes from PGPASSWORD or --state-password-file.
``start()`` answers None with the reason when no server can be started here;
the fixtures skip loudly with it.
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
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PgServer", "serve", "start"]

PG_USER = "batch"
PG_PASSWORD = "pg-Secr3t-for-tests"


@dataclass
class PgServer:
    host: str
    port: int
    user: str
    password: str
    datadir: Path
    _proc: subprocess.Popen[bytes]
    _log: Path
    _root: Path
    _argv: list[str]

    def url(self, db: str = "postgres", **options: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"postgresql://{self.user}@{self.host}:{self.port}/{db}" + (f"?{query}" if query else "")

    def create_database(self, name: str) -> str:
        """A fresh database owned by the test role; answers its URL (no password in it)."""
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                             dbname="postgres", autocommit=True) as conn:  # fmt: skip
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def restart(self, down: float) -> None:
        """Stop the server the way an administrator's restart does (fast shutdown: every
        session ends with AdminShutdown), keep it down ``down`` seconds, start it again
        on the same port and data, and wait until it accepts connections."""
        # the postmaster itself: runuser, our child when we run as root, does not pass SIGINT on
        postmaster = int((self.datadir / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGINT)
        self._proc.wait(timeout=30)
        time.sleep(down)
        self._proc = subprocess.Popen(self._argv, stdout=self._log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready = subprocess.run([str(Path(self._argv[self._argv.index("-D") - 1]).parent / "pg_isready"),
                                    "-h", self.host, "-p", str(self.port)], capture_output=True)  # fmt: skip
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("postgres did not come back within 30 s")

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()  # SIGTERM: "smart" shutdown
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._root, ignore_errors=True)


def _find_bin() -> Path | None:
    override = os.environ.get("BATCH_CANCEL_PG_BIN")
    candidates = [override] if override else sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "postgres").is_file():
            return Path(c)
    for name in ("initdb", "postgres"):
        if shutil.which(name) is None:
            return None
    return Path(str(shutil.which("postgres"))).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(*, fsync: bool = False) -> PgServer | str:
    """Start a server; answer it, or a sentence saying why none could be started.

    Tests run it with fsync off (its durability is not under test, and commits are
    cheap); the benchmark asks for fsync on, the way a server runs.
    """
    bindir = _find_bin()
    if bindir is None:
        return "no PostgreSQL server binaries (initdb, postgres) found; apt-get install postgresql"
    as_user: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            return "running as root and no runuser to start PostgreSQL as the postgres user"
        as_user = [runuser, "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="bc-pg-"))
    datadir, sockdir, log = root / "data", root / "sock", root / "server.log"
    sockdir.mkdir()
    pwfile = root / "pw"
    pwfile.write_text(PG_PASSWORD + "\n")
    if as_user:
        shutil.chown(root, "postgres")
        shutil.chown(sockdir, "postgres")
        shutil.chown(pwfile, "postgres")
    init = subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(datadir), "-U", PG_USER, "--pwfile", str(pwfile),
         "-A", "scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync", "--locale=C"],
        capture_output=True, text=True,
    )  # fmt: skip
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        return f"initdb failed: {init.stderr.strip()[-300:]}"
    port = _free_port()
    durability = [] if fsync else ["-c", "fsync=off", "-c", "synchronous_commit=off",
                                   "-c", "full_page_writes=off"]  # fmt: skip
    argv = [*as_user, str(bindir / "postgres"), "-D", str(datadir), "-p", str(port), "-h", "127.0.0.1",
            "-k", str(sockdir), *durability, "-c", "max_connections=200", "-c", "shared_buffers=64MB"]
    proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    server = PgServer("127.0.0.1", port, PG_USER, PG_PASSWORD, datadir, proc, log, root, argv)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")[-400:]
            shutil.rmtree(root, ignore_errors=True)
            return f"postgres exited at start: {text}"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            ready = subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                                   capture_output=True)  # fmt: skip
            if ready.returncode == 0:
                return server
        time.sleep(0.1)
    server.stop()
    return "postgres did not accept connections within 30 s"


def serve() -> Iterator[PgServer]:
    """A server for a test session (both suites' fixtures): yields it and stops it after;
    skips, loudly, only where this machine cannot start one."""
    import pytest

    server = start()
    if isinstance(server, str):
        pytest.skip(f"PostgreSQL TESTS SKIPPED: cannot start a server here: {server}")
    try:
        yield server
    finally:
        server.stop()
