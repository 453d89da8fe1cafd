"""The record POSTs' pyreqwest client (gws/record_transport.py): what its failures mean.

Over real sockets, each failure is read as the outcome model needs it: nothing written
(the connection was never made) or maybe processed (the request may have gone out).
pyreqwest's own classes say otherwise for two of them (ConnectError for a reset after
the request was written, ConnectTimeoutError for a written request never answered):
these tests are what catches a version of it whose causes read differently.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from batch_cancel.exceptions import TransientError
from batch_cancel.gws.record_transport import RecordTransport
from batch_cancel.gws.responses import TRANSPORT_ERRORS, translate_transport_error


class _Peer:
    """A TCP server that reads one request, then does ``mode`` to the connection."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests: list[bytes] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.requests.append(conn.recv(65536))
            if self.mode == "reset":  # SO_LINGER 0: close sends RST
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                conn.close()
            elif self.mode == "close":
                conn.close()
            elif self.mode == "answer":
                body = b'{"statusCode":0}'
                head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n")  # fmt: skip
                conn.sendall(head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                self._held.append(conn)
            else:  # "hang": read it, never answer
                self._held.append(conn)

    def close(self) -> None:
        self._sock.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def peer(request: pytest.FixtureRequest) -> Iterator[_Peer]:
    server = _Peer(request.param)
    yield server
    server.close()


def _transport(total: float = 2.0, connect: float = 0.5) -> RecordTransport:
    return RecordTransport(proxy=None, total_timeout=total, connect_timeout=connect, max_connections=4,
                           default_headers={"Accept": "application/json"})  # fmt: skip


async def _error_of(url: str, transport: RecordTransport) -> TransientError:
    try:
        await transport.post(url, {"Content-Type": "application/json"}, b"{}")
    except TRANSPORT_ERRORS as exc:
        return translate_transport_error(exc)
    finally:
        await transport.aclose()
    raise AssertionError("the POST did not fail")


async def test_a_refused_connection_was_never_written() -> None:
    spare = socket.create_server(("127.0.0.1", 0))
    port = spare.getsockname()[1]
    spare.close()  # nothing listens there now
    error = await _error_of(f"http://127.0.0.1:{port}/x", _transport())
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
        error = await _error_of(f"http://127.0.0.1:{port}/x", _transport(total=5.0, connect=0.3))
    finally:
        for sock in (*waiting, full):
            sock.close()
    assert error.unreachable and not error.may_have_been_processed, error


@pytest.mark.parametrize("peer", ["reset", "close"], indirect=True)
async def test_a_connection_broken_after_the_request_may_have_been_processed(peer: _Peer) -> None:
    error = await _error_of(f"http://127.0.0.1:{peer.port}/x", _transport())
    assert peer.requests and peer.requests[0].startswith(b"POST /x HTTP/1.1")  # it was written
    assert error.may_have_been_processed and not error.unreachable, error
    assert "ConnectError" not in str(error), error  # pyreqwest's class name would mislead


@pytest.mark.parametrize("peer", ["hang"], indirect=True)
async def test_a_written_request_never_answered_is_unanswered(peer: _Peer) -> None:
    error = await _error_of(f"http://127.0.0.1:{peer.port}/x", _transport(total=0.5, connect=0.3))
    assert peer.requests
    assert error.unanswered and error.may_have_been_processed and not error.unreachable, error


@pytest.mark.parametrize("peer", ["answer"], indirect=True)
async def test_an_answer_keeps_every_set_cookie_and_the_headers_case_insensitive(peer: _Peer) -> None:
    transport = _transport()
    try:
        headers = {"Content-Type": "application/json", "Cookie": "JSESSIONID=s"}
        reply = await transport.post(f"http://127.0.0.1:{peer.port}/x", headers, b"{}")
    finally:
        await transport.aclose()
    assert reply.status == 200 and reply.reason == "OK" and reply.content == b'{"statusCode":0}'
    assert reply.headers.getall("set-cookie") == ["a=1", "b=2"]  # type: ignore[attr-defined]
    assert reply.headers.get("content-type") == "application/json"
    sent = peer.requests[0].lower()
    assert b"cookie: jsessionid=s" in sent and b"accept: application/json" in sent
