"""The CancelRecord POSTs' own HTTP/1.1 client: kept-alive connections, one write per
request, answers parsed by httptools (llhttp, the parser of Node.js and of aiohttp).

Why our own: at 64 requests in flight the client's CPU per POST is most of the send
phase, and on a shared box every microsecond of it is taken from GWS's side of the
contest. aiohttp spends it on what this one request shape never needs (a request and a
response object of many parts, a task to write the body on Python 3.11, a timer context,
the header multidict merged per request, redirects, cookies, compression); the
Rust-backed clients measured no better inside the tool (their answers arrive from
another thread). Measured: 0.57x of aiohttp's client CPU per POST (``python -m
benchmarks.http_clients``), the tool's send phase 0.76x the lean script's (``python -m
benchmarks``); README, Benchmarks.

What it does, and no more: ``POST`` with a prepared header block (rebuilt only when the
session's headers change), ``Content-Length`` bodies, answers with a length, chunked or
up to the close; a pool of at most ``max_connections`` kept-alive connections; the run's
total and connect timeouts; TLS with the run's one context (gws/network.py: the same
trust store, client certificate and verification as aiohttp's). It is used without a
proxy only (``GwsSession`` decides): proxies, redirects and everything else stay on aiohttp.

It knows what the outcome model needs better than a general client can say it:

* no connection could be made (refused, unreachable, connect timeout, the pool's wait
  ran out): **never written**, an outage's sign (``TransientError.unreachable``);
* the connection broke or the parser failed after the request was written: **may have
  been processed**;
* no answer within the total timeout after the write: **unanswered**, may have been
  processed;
* a write fence (a fleet worker's lease) asked with nothing awaited between it and the
  write: :class:`~batch_cancel.exceptions.NotWritten`.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import urllib.parse
from collections.abc import Callable, Mapping

import httptools
from multidict import CIMultiDict

from batch_cancel.exceptions import NotWritten
from batch_cancel.gws.responses import Reply, transport_failure

__all__ = ["KEEP_IDLE", "RecordTransport"]

# A connection idle this long is closed, not used: a server closes idle connections after
# its own timeout (Jetty's default: 30 s), and one it closes just as a request is written
# leaves that request in doubt. aiohttp's default keep-alive, for the same reason.
KEEP_IDLE = 15.0


class _Connection(asyncio.Protocol):
    """One kept-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[Reply] | None = None
        self._reason = b""
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._headers_done = False
        self._length_known = False
        self.reusable = False

    # -- asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"unreadable HTTP answer: {exc}")
            self.abort()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._answer is None or self._answer.done():
            return
        if self._headers_done and not self._length_known:
            # an answer with neither a length nor chunks ends with the connection
            self.on_message_complete()
            return
        self._fail(f"connection {'reset' if exc else 'closed'} before the answer was complete"
                   + (f" ({exc})" if exc else ""))  # fmt: skip

    # -- httptools callbacks -------------------------------------------------------------
    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._length_known = any(
            name.lower() in ("content-length", "transfer-encoding") for name, _ in self._headers
        )

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        answer = self._answer
        if answer is None or answer.done():
            return
        if self._parser.get_status_code() < 200:
            # an interim answer (100 Continue, 102, 103): the final one follows on this
            # connection; taken for the answer, a 1xx would read as an acceptance
            self.begin(answer)
            return
        self.reusable = self._parser.should_keep_alive() and not self.closed
        answer.set_result(Reply(self._parser.get_status_code(), self._reason.decode("latin-1"),
                                CIMultiDict(self._headers), b"".join(self._body)))  # fmt: skip

    # -- ours --------------------------------------------------------------------------
    def begin(self, answer: asyncio.Future[Reply]) -> None:
        self._answer = answer
        self._reason = b""
        self._headers = []
        self._body = []
        self._headers_done = self._length_known = self.reusable = False

    def _fail(self, why: str) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(transport_failure(why, unreachable=False))

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class RecordTransport:
    """POSTs to one ``http://host:port``; made and used inside one running loop."""

    def __init__(self, base_url: str, *, total_timeout: float, connect_timeout: float,
                 max_connections: int, default_headers: Mapping[str, str],
                 write_gate: Callable[[], bool] | None = None,
                 tls: ssl.SSLContext | None = None, keep_idle: float = KEEP_IDLE) -> None:  # fmt: skip
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or (parts.scheme == "https") != (
            tls is not None
        ):
            raise ValueError(f"{base_url!r}: an http:// URL, or an https:// URL with a TLS context")
        self._host = parts.hostname
        self._port = parts.port or (443 if tls else 80)
        # the run's one TLS context (gws/network.py): the same trust store, client
        # certificate and verification as every aiohttp request of the run
        self._tls = tls
        self._keep_idle = keep_idle
        self._host_header = parts.netloc.rsplit("@", 1)[-1]
        self._total = total_timeout
        self._connect = connect_timeout
        self._max = max_connections
        self._defaults = dict(default_headers)
        self._gate = write_gate
        # idle connections, each with when it went idle (loop time)
        self._idle: collections.deque[tuple[_Connection, float]] = collections.deque()
        self._open = 0  # connections made or being made, idle or in use
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._headers_seen: Mapping[str, str] | None = None
        self._head = b""
        self._closed = False

    async def post(self, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """One POST, read in full; failures are :class:`TransientError` saying whether the
        request may have been processed, or :class:`NotWritten`."""
        if headers is not self._headers_seen:
            # the session hands the same dict until the CSRF token or a cookie changes
            self._head = self._header_block(path, headers)
            self._headers_seen = headers
        request = b"%sContent-Length: %d\r\n\r\n%s" % (self._head, len(body), body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._total
        conn = await self._acquire(loop, deadline)
        if self._gate is not None and not self._gate():
            # asked with nothing awaited between it and the write: a worker frozen before
            # this line and thawed past its lease writes nothing (the connection stays good)
            self._idle.append((conn, loop.time()))
            self._wake()
            raise NotWritten("not written: sending is held (this worker's lease deadline passed)")
        answer: asyncio.Future[Reply] = loop.create_future()
        conn.begin(answer)
        assert conn.transport is not None
        conn.transport.write(request)
        timer = loop.call_at(deadline, _expire, answer)
        try:
            reply = await answer
        except BaseException:
            # a timeout, a broken connection or a cancelled wait: the answer may still
            # come on this connection, so it can carry no other request
            conn.abort()
            self._release(conn)
            raise
        finally:
            timer.cancel()
        self._release(conn)
        return reply

    def _header_block(self, path: str, headers: Mapping[str, str]) -> bytes:
        lines = [f"POST {path} HTTP/1.1", f"Host: {self._host_header}"]
        for name, value in {**self._defaults, **headers}.items():
            if any(c in name + value for c in "\r\n\0") or name.lower() == "content-length":
                raise ValueError(f"header {name!r} cannot be sent as given")
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n").encode("latin-1")

    async def _acquire(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        while True:
            while self._idle:
                conn, since = self._idle.pop()  # the most recently used: least likely closed by the server
                if not conn.closed and loop.time() - since < self._keep_idle:
                    return conn
                if not conn.closed:
                    conn.abort()
                self._open -= 1
            if self._closed:
                raise transport_failure("the record transport is closed", unreachable=True)
            if self._open < self._max:
                return await self._connect_new(loop, deadline)
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    # handed a free connection in the same turn it was cancelled (or ran
                    # out of time): the next waiter gets it, or it waits for nothing
                    self._wake()
                if isinstance(exc, TimeoutError):
                    raise transport_failure("no connection free within the request timeout",
                                            unreachable=True) from None  # fmt: skip
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    async def _connect_new(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        self._open += 1
        try:
            async with asyncio.timeout_at(min(deadline, loop.time() + self._connect)):
                _, conn = await loop.create_connection(
                    _Connection, self._host, self._port, ssl=self._tls,
                    server_hostname=self._host if self._tls else None,
                )
        except TimeoutError:
            self._open -= 1
            self._wake()
            raise transport_failure(f"connect to {self._host_header} timed out", unreachable=True) from None
        except OSError as exc:
            self._open -= 1
            self._wake()
            raise transport_failure(f"cannot connect to {self._host_header}: {exc.strerror or exc}",
                                    unreachable=True) from exc  # fmt: skip
        except BaseException:
            self._open -= 1
            self._wake()
            raise
        return conn

    def _release(self, conn: _Connection) -> None:
        if conn.closed or not conn.reusable or self._closed:
            if not conn.closed:
                conn.abort()
            self._open -= 1
        else:
            self._idle.append((conn, asyncio.get_running_loop().time()))
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            conn, _ = self._idle.pop()
            if conn.transport is not None:
                conn.transport.close()
            self._open -= 1
        self._wake()


def _expire(answer: asyncio.Future[Reply]) -> None:
    if not answer.done():
        answer.set_exception(transport_failure("no HTTP answer within the request timeout",
                                               unreachable=False, unanswered=True))  # fmt: skip
