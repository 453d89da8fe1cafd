"""Fixtures that run the CometD project's own JavaScript code (client and server) in Node.js.

Node.js and ``npm ci`` in this directory are part of the test set-up (``make test`` does both), so a
missing ``node`` binary or ``node_modules`` fails these tests with a message instead of skipping.

Every Node process is started with a pipe on stdin and exits when it closes, so nothing outlives the
test even if pytest is killed; the fixtures also terminate (then kill) them in their finaliser.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

INTEROP_DIR = Path(__file__).resolve().parent
NODE_MODULES = INTEROP_DIR / "node_modules"
REQUIRED_PACKAGES = ("cometd", "cometd-nodejs-client", "cometd-nodejs-server")
BAYEUX_PATH = "/api/v2/notifications"
OUTBOUND = "/v2/me/outbound"

Line = dict[str, Any]


def node_executable() -> str:
    """The ``node`` binary, or a test failure that says how to get the set-up right."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "interop tests need Node.js (>= 18) on PATH: install it, then run `make test` "
            "(it runs `npm ci` in tests/interop)",
            pytrace=False,
        )
    missing = [p for p in REQUIRED_PACKAGES if not (NODE_MODULES / p / "package.json").is_file()]
    if missing:
        pytest.fail(
            f"interop tests need the npm packages {', '.join(missing)} in {NODE_MODULES}: "
            "run `make npm` (or `cd tests/interop && npm ci`)",
            pytrace=False,
        )
    return node


@dataclass
class NodeProcess:
    """A Node script that prints one JSON object per line on stdout."""

    name: str
    proc: asyncio.subprocess.Process
    lines: list[Line] = field(default_factory=list)
    _stderr: bytes = b""

    @classmethod
    async def start(cls, script: str, *args: str) -> NodeProcess:
        proc = await asyncio.create_subprocess_exec(
            node_executable(),
            str(INTEROP_DIR / script),
            *args,
            cwd=INTEROP_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(script, proc)

    async def next_line(self, within: float) -> Line:
        """The next JSON line; fails the test on timeout or when the process ends first."""
        assert self.proc.stdout is not None
        try:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), within)
        except TimeoutError:
            pytest.fail(f"{self.name}: no output within {within} s; {await self.stderr()}")
        if not raw:
            pytest.fail(f"{self.name} exited ({self.proc.returncode}); {await self.stderr()}")
        try:
            line: Line = json.loads(raw)
        except json.JSONDecodeError:
            line = {"event": "text", "text": raw.decode(errors="replace").rstrip()}
        self.lines.append(line)
        return line

    async def wait_for(self, predicate: Callable[[Line], bool], within: float) -> Line:
        """The first line (already read or still coming) matching *predicate*, in *within* s."""
        for line in self.lines:
            if predicate(line):
                return line
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            left = deadline - loop.time()
            if left <= 0:
                pytest.fail(f"{self.name}: expected line not seen in {within} s: {self.lines}")
            line = await self.next_line(left)
            if predicate(line):
                return line

    async def stderr(self) -> str:
        """What the process wrote on stderr (read once it has exited, else what is buffered)."""
        if self.proc.stderr is not None and self.proc.returncode is not None:
            with contextlib.suppress(TimeoutError):
                self._stderr += await asyncio.wait_for(self.proc.stderr.read(), 1)
        text = self._stderr.decode(errors="replace").strip()
        return f"stderr: {text[-2000:]}" if text else "no stderr"

    async def stop(self) -> None:
        """Close stdin (the scripts exit on it), then terminate, then kill: bounded to ~3 s."""
        if self.proc.returncode is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 1)
            except TimeoutError:
                self.proc.terminate()
                try:
                    await asyncio.wait_for(self.proc.wait(), 1)
                except TimeoutError:
                    self.proc.kill()
                    await asyncio.wait_for(self.proc.wait(), 1)


@pytest.fixture
async def node_processes() -> AsyncIterator[list[NodeProcess]]:
    """Register Node processes here; they are stopped when the test ends, whatever happened."""
    started: list[NodeProcess] = []
    try:
        yield started
    finally:
        for process in started:
            await process.stop()


@dataclass
class CometDNodeServer:
    """The cometd-nodejs-server process and its control API (see cometd_server.cjs)."""

    process: NodeProcess
    port: int
    control: httpx.AsyncClient

    def bayeux_url(self, host: str = "localhost") -> str:
        return f"http://{host}:{self.port}{BAYEUX_PATH}"

    async def publish(self, data: dict[str, Any], channel: str = OUTBOUND) -> int:
        """Publish *data* on *channel*; answers how many sessions were subscribed to it."""
        response = await self.control.post("/control/publish", json={"channel": channel, "data": data})
        response.raise_for_status()
        subscribers: int = response.json()["subscribers"]
        return subscribers

    async def drop(self) -> int:
        """Forget every Bayeux session and cut the long polls in flight (a server restart)."""
        response = await self.control.post("/control/drop")
        response.raise_for_status()
        dropped: int = response.json()["dropped"]
        return dropped

    async def strip_cookie(self, on: bool) -> None:
        """While on, the server never sees its BAYEUX_BROWSER cookie: every connect gets 402."""
        response = await self.control.post("/control/strip-cookie", json={"on": on})
        response.raise_for_status()

    async def stats(self) -> dict[str, Any]:
        response = await self.control.get("/control/stats")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    async def wait_for_subscribers(self, generation: int, count: int, within: float) -> None:
        """Wait until *count* subscriptions to /v2/me/outbound exist in server *generation*."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            stats = await self.stats()
            subs = [
                s for s in stats["subscribes"] if s["generation"] == generation and s["channel"] == OUTBOUND
            ]
            if len(subs) >= count:
                return
            if loop.time() > deadline:
                pytest.fail(f"no subscription to {OUTBOUND} in generation {generation}: {stats}")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def run_cometd_server(
    node_processes: list[NodeProcess], *, long_poll_ms: int = 10000
) -> AsyncIterator[CometDNodeServer]:
    """cometd-nodejs-server on a free loopback port (listening on 127.0.0.1 only)."""
    process = await NodeProcess.start(
        "cometd_server.cjs", "--host", "127.0.0.1", "--port", "0", "--timeout", str(long_poll_ms)
    )
    node_processes.append(process)
    ready = await process.wait_for(lambda line: line.get("event") == "ready", within=10)
    port = int(ready["port"])
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as control:
        yield CometDNodeServer(process, port, control)


@pytest.fixture
async def cometd_server(node_processes: list[NodeProcess]) -> AsyncIterator[CometDNodeServer]:
    """cometd-nodejs-server with a 10 s long-poll timeout."""
    async with run_cometd_server(node_processes) as server:
        yield server


ServerStarter = Callable[..., contextlib.AbstractAsyncContextManager[CometDNodeServer]]


@pytest.fixture
def cometd_server_with(node_processes: list[NodeProcess]) -> ServerStarter:
    """``async with cometd_server_with(long_poll_ms=2000) as server:`` for non-default options."""

    def start(*, long_poll_ms: int = 10000) -> contextlib.AbstractAsyncContextManager[CometDNodeServer]:
        return run_cometd_server(node_processes, long_poll_ms=long_poll_ms)

    return start


class JsClientStarter(Protocol):
    async def __call__(
        self,
        url: str,
        *,
        cookie: str = "",
        headers: dict[str, str] | None = None,
        append_message_type: bool = True,
        count: int = 1,
        timeout_ms: int = 15000,
    ) -> NodeProcess: ...


@pytest.fixture
def start_js_client(node_processes: list[NodeProcess]) -> JsClientStarter:
    """Start the official CometD JS client (cometd_client.mjs); returns once it printed "ready".

    ``cookie`` and ``headers`` are sent on every Bayeux request (e.g. ``"JSESSIONID=…"`` from a
    REST login); ``append_message_type`` is CometD's appendMessageTypeToURL (true by default in
    the JS client: URL/handshake, URL/connect, ...). The client exits after ``count`` messages on
    /v2/me/outbound or after ``timeout_ms``.
    """

    async def start(
        url: str,
        *,
        cookie: str = "",
        headers: dict[str, str] | None = None,
        append_message_type: bool = True,
        count: int = 1,
        timeout_ms: int = 15000,
    ) -> NodeProcess:
        args = ["--url", url, "--count", str(count), "--timeout", str(timeout_ms)]
        args += ["--append-message-type", "true" if append_message_type else "false"]
        args += ["--headers", json.dumps(headers or {})]
        if cookie:
            args += ["--cookie", cookie]
        process = await NodeProcess.start("cometd_client.mjs", *args)
        node_processes.append(process)
        first = await process.wait_for(
            lambda line: line.get("event") in ("ready", "handshake_failed", "subscribe_failed"),
            within=10,
        )
        # An AssertionError (not pytest.fail) so an xfail(raises=AssertionError) can expect it
        # without also swallowing a missing Node.js set-up.
        assert first.get("event") == "ready", f"CometD JS client did not subscribe: {process.lines}"
        return process

    return start
