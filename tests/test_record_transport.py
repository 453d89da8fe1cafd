"""The record POSTs' own HTTP/1.1 client (gws/record_transport.py), over real sockets.

Each failure must be read as the outcome model needs it: never written (no connection
was made) or may have been processed (the request may have gone out), and unanswered
when it went out and no answer came. The answers must come whole, however the server
frames them, and a connection must carry another request only when its last answer was
complete. The end-to-end runs over it (every plain-http test against the simulator:
faults, resets, hangs, restarts) are in the other test files.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from batch_cancel.exceptions import NotWritten, TransientError
from batch_cancel.gws.record_transport import RecordTransport
from batch_cancel.gws.responses import Reply

JSON = b'{"statusCode":0}'
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n" + JSON


class _Peer:
    """A TCP server; ``handle`` gets each connection and the requests read from it."""

    def __init__(self, handle: Callable[[socket.socket, _Peer], None]) -> None:
        self.requests: list[bytes] = []
        self.connections = 0
        self._handle = handle
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            self._held.append(conn)
            threading.Thread(target=self._handle, args=(conn, self), daemon=True).start()

    def read_request(self, conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            try:
                chunk = conn.recv(65536)
            except OSError:  # closed by close() at the test's end
                return b""
            if not chunk:
                return b""
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))  # fmt: skip
        while len(body) < length:
            body += conn.recv(65536)
        self.requests.append(data)
        return data

    def close(self) -> None:
        self._sock.close()
        for conn in self._held:
            with contextlib.suppress(OSError):
                conn.close()


def _reset(conn: socket.socket, peer: _Peer) -> None:
    peer.read_request(conn)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
    conn.close()


def _close(conn: socket.socket, peer: _Peer) -> None:
    peer.read_request(conn)
    conn.close()


def _hang(conn: socket.socket, peer: _Peer) -> None:
    peer.read_request(conn)


def _keep_alive(conn: socket.socket, peer: _Peer) -> None:
    while peer.read_request(conn):
        conn.sendall(ANSWER)


def _one_then_close(conn: socket.socket, peer: _Peer) -> None:
    """Answer one request, then close the idle connection (a server's keep-alive timeout)."""
    peer.read_request(conn)
    conn.sendall(ANSWER)
    conn.close()


def _framed(answer: bytes) -> Callable[[socket.socket, _Peer], None]:
    def handle(conn: socket.socket, peer: _Peer) -> None:
        peer.read_request(conn)
        for i in range(0, len(answer), 7):  # in pieces, as a network may hand it over
            conn.sendall(answer[i:i + 7])
        if b"Content-Length" not in answer and b"chunked" not in answer:
            conn.close()
    return handle


@pytest.fixture
def peer(request: pytest.FixtureRequest) -> Iterator[_Peer]:
    server = _Peer(request.param)
    yield server
    server.close()


def _transport(url: str, total: float = 2.0, connect: float = 0.5, max_connections: int = 4,
               gate: Callable[[], bool] | None = None,
               keep_idle: float = 15.0) -> RecordTransport:  # fmt: skip
    return RecordTransport(url, total_timeout=total, connect_timeout=connect, max_connections=max_connections,
                           default_headers={"Accept": "application/json"}, write_gate=gate,
                           keep_idle=keep_idle)  # fmt: skip


async def _post_once(url: str) -> Reply:
    transport = _transport(url)
    try:
        return await transport.post("/x", {}, b"{}")
    finally:
        await transport.aclose()


async def _error_of(transport: RecordTransport) -> TransientError:
    try:
        await transport.post("/x", {"Content-Type": "application/json"}, b"{}")
    except TransientError as exc:
        return exc
    finally:
        await transport.aclose()
    raise AssertionError("the POST did not fail")


async def test_a_refused_connection_was_never_written() -> None:
    spare = socket.create_server(("127.0.0.1", 0))
    port = spare.getsockname()[1]
    spare.close()  # nothing listens there now
    error = await _error_of(_transport(f"http://127.0.0.1:{port}"))
    assert error.unreachable and not error.may_have_been_processed, error


async def test_a_connect_that_times_out_was_never_written() -> None:
    # a listener whose accept queue is full: the kernel drops further SYNs, so connect() hangs
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    port = full.getsockname()[1]
    waiting = []
    for _ in range(3):
        sock = socket.socket()
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(("127.0.0.1", port))
        waiting.append(sock)
    await asyncio.sleep(0.1)
    try:
        error = await _error_of(_transport(f"http://127.0.0.1:{port}", total=5.0, connect=0.3))
    finally:
        for sock in (*waiting, full):
            sock.close()
    assert error.unreachable and not error.may_have_been_processed, error


@pytest.mark.parametrize("peer", [_reset, _close], indirect=True, ids=["reset", "closed"])
async def test_a_connection_broken_after_the_request_may_have_been_processed(peer: _Peer) -> None:
    error = await _error_of(_transport(peer.url))
    assert peer.requests and peer.requests[0].startswith(b"POST /x HTTP/1.1\r\n")  # it was written
    assert error.may_have_been_processed and not error.unreachable and not error.unanswered, error


@pytest.mark.parametrize("peer", [_hang], indirect=True)
async def test_a_written_request_never_answered_is_unanswered(peer: _Peer) -> None:
    error = await _error_of(_transport(peer.url, total=0.5, connect=0.3))
    assert peer.requests
    assert error.unanswered and error.may_have_been_processed and not error.unreachable, error


@pytest.mark.parametrize("peer", [_framed(
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
    b"Content-Length: 16\r\n\r\n" + JSON)], indirect=True)
async def test_an_answer_keeps_every_set_cookie_and_the_headers_case_insensitive(peer: _Peer) -> None:
    transport = _transport(peer.url)
    try:
        headers = {"Content-Type": "application/json", "Cookie": "JSESSIONID=s"}
        reply = await transport.post("/x", headers, b"{}")
    finally:
        await transport.aclose()
    assert (reply.status, reply.reason, reply.content) == (200, "OK", JSON)
    assert reply.headers.getall("set-cookie") == ["a=1", "b=2"]
    assert reply.headers.get("Content-Type") == "application/json"
    sent = peer.requests[0]
    assert sent.startswith(b"POST /x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % peer.port)
    for line in (b"Accept: application/json", b"Cookie: JSESSIONID=s", b"Content-Length: 2"):
        assert b"\r\n" + line + b"\r\n" in sent, sent
    assert sent.endswith(b"\r\n\r\n{}")


@pytest.mark.parametrize("peer", [
    _framed(b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"6\r\n{\"stat\r\na\r\nusCode\":4}\r\n0\r\n\r\n"),
    _framed(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n\r\n{\"statusCode\":4}"),
], indirect=True, ids=["chunked", "until-close"])  # fmt: skip
async def test_answers_framed_by_chunks_or_by_the_close_come_whole(peer: _Peer) -> None:
    reply = await _post_once(peer.url)
    assert (reply.status, reply.reason, reply.content) == (503, "Service Unavailable", b'{"statusCode":4}')


@pytest.mark.parametrize("peer", [_framed(b"HTTP/1.1 100 Continue\r\n\r\n" + ANSWER)], indirect=True)
async def test_an_interim_answer_is_not_taken_for_the_answer(peer: _Peer) -> None:
    reply = await _post_once(peer.url)
    assert (reply.status, reply.content) == (200, JSON)


@pytest.mark.parametrize("peer", [_keep_alive], indirect=True)
async def test_a_connection_idle_too_long_is_closed_not_used(peer: _Peer) -> None:
    transport = _transport(peer.url, keep_idle=0.2)
    try:
        await transport.post("/x", {}, b"{}")
        await transport.post("/x", {}, b"{}")  # at once: the same connection
        await asyncio.sleep(0.4)
        await transport.post("/x", {}, b"{}")  # idle past keep_idle: a new one
    finally:
        await transport.aclose()
    assert (len(peer.requests), peer.connections) == (3, 2)


@pytest.mark.parametrize("peer", [_keep_alive], indirect=True)
async def test_connections_are_kept_and_never_more_than_the_limit(peer: _Peer) -> None:
    transport = _transport(peer.url, max_connections=2)
    try:
        replies = await asyncio.gather(*(transport.post("/x", {}, b"{}") for _ in range(10)))
        replies.append(await transport.post("/x", {}, b"{}"))
    finally:
        await transport.aclose()
    assert [r.status for r in replies] == [200] * 11
    assert len(peer.requests) == 11 and peer.connections == 2


def _slow_keep_alive(conn: socket.socket, peer: _Peer) -> None:
    while peer.read_request(conn):
        time.sleep(0.2)
        conn.sendall(ANSWER)


@pytest.mark.parametrize("peer", [_slow_keep_alive], indirect=True)
async def test_a_waiter_cancelled_as_it_is_handed_the_connection_passes_it_on(peer: _Peer) -> None:
    transport = _transport(peer.url, total=5.0, max_connections=1)
    second: asyncio.Future[Reply] | None = None

    async def first() -> Reply:
        reply = await transport.post("/x", {}, b"{}")
        # the release just handed the one connection to the second, not yet running:
        # cancelled now, it must pass the connection on to the third
        assert second is not None
        second.cancel()
        return reply

    try:
        one = asyncio.ensure_future(first())
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(transport.post("/x", {}, b"{}"))
        await asyncio.sleep(0.01)
        third = asyncio.ensure_future(transport.post("/x", {}, b"{}"))
        await asyncio.sleep(0.01)
        started = time.monotonic()
        assert (await one).status == 200
        with pytest.raises(asyncio.CancelledError):
            await second
        assert (await third).status == 200
        assert time.monotonic() - started < 1.0  # not after the 5 s request timeout
    finally:
        await transport.aclose()
    assert peer.connections == 1


@pytest.mark.parametrize("peer", [_one_then_close], indirect=True)
async def test_a_connection_the_server_closed_while_idle_is_not_used_again(peer: _Peer) -> None:
    transport = _transport(peer.url)
    try:
        first = await transport.post("/x", {}, b"{}")
        await asyncio.sleep(0.2)  # the server's close arrives while the connection is idle
        second = await transport.post("/x", {}, b"{}")
    finally:
        await transport.aclose()
    assert (first.status, second.status) == (200, 200)
    assert peer.connections == 2


@pytest.mark.parametrize("peer", [_keep_alive], indirect=True)
async def test_a_shut_write_gate_writes_nothing(peer: _Peer) -> None:
    transport = _transport(peer.url, gate=lambda: False)
    try:
        with pytest.raises(NotWritten):
            await transport.post("/x", {}, b"{}")
        await asyncio.sleep(0.1)
    finally:
        await transport.aclose()
    assert peer.requests == []


@pytest.mark.parametrize("peer", [_hang], indirect=True)
async def test_a_cancelled_request_leaves_its_connection_unused(peer: _Peer) -> None:
    transport = _transport(peer.url, total=5.0)
    try:
        post = asyncio.ensure_future(transport.post("/x", {}, b"{}"))
        while not peer.requests:
            await asyncio.sleep(0.01)
        post.cancel()
        with pytest.raises(asyncio.CancelledError):
            await post
        later = asyncio.ensure_future(transport.post("/x", {}, b"{}"))
        while len(peer.requests) < 2:
            await asyncio.sleep(0.01)
        later.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await later
    finally:
        await transport.aclose()
    assert peer.connections == 2  # the second request did not ride on the first's connection


async def test_a_header_value_with_a_line_break_is_refused() -> None:
    transport = _transport("http://127.0.0.1:9")
    with pytest.raises(ValueError, match="X-CSRF-TOKEN"):
        await transport.post("/x", {"X-CSRF-TOKEN": "a\r\nInjected: 1"}, b"{}")
    await transport.aclose()
