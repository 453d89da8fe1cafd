from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
from helpers import make_sim
from pg_server import PgServer, serve
from s3_server import S3Server
from s3_server import serve as s3_serve

from batch_cancel.simulator import ThreadedSimulator

_PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "GWS_PROXY", "GWS_CA_BUNDLE",
               "GWS_CLIENT_CERT", "GWS_CLIENT_KEY")  # fmt: skip


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy or CA set on the machine running the tests must not steer their loopback runs."""
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    # nor may a developer's BATCH_CANCEL_RATE and the like (every run option reads one)
    for name in [n for n in os.environ if n.startswith("BATCH_CANCEL_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def sim() -> Iterator[ThreadedSimulator]:
    s = make_sim()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One real PostgreSQL server for the session (tests/pg_server.py); skipped, loudly, only
    when this machine cannot start one."""
    yield from serve()


@pytest.fixture
def pg_url(pg_server: PgServer, request: pytest.FixtureRequest) -> str:
    """A journal URL with a schema of its own for this test (no password in it)."""
    schema = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    return pg_server.url("postgres", schema=schema + "_" + secrets.token_hex(3))


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One real S3-compatible server (moto's, tests/s3_server.py) for the session."""
    yield from s3_serve()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The server, its endpoint and keys in this test's environment (as the SDK reads them)."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server
