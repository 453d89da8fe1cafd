"""A TCP proxy that can stop forwarding without closing anything: a half-open link.

A cut cable, a firewall dropping packets or a frozen NAT neither closes a socket
nor answers on it: the peer's writes go unacknowledged and its reads wait. That is
what :meth:`BlackholeProxy.cut` does to every connection through it, old and new
(a new one is accepted, then nothing is forwarded either way); nothing is closed.
The proxy runs its own event loop on a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

__all__ = ["BlackholeProxy"]


class BlackholeProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._cut = threading.Event()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), name="blackhole-proxy",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        started.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if self._cut.is_set():
            return  # accepted, never forwarded, never closed
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers.append(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                while self._cut.is_set():
                    # hold the bytes: the sender's kernel still buffers what it writes, until
                    # its window fills and its writes go unacknowledged
                    await asyncio.sleep(0.05)
                writer.write(data)
                await writer.drain()
        if not self._cut.is_set():
            with contextlib.suppress(OSError):
                writer.close()

    def cut(self) -> None:
        """From now on, forward nothing either way and close nothing."""
        self._cut.set()

    def close(self) -> None:
        def stop() -> None:
            if self._server is not None:
                self._server.close()
            for w in self._writers:
                with contextlib.suppress(Exception):
                    w.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(stop)
        self._thread.join(5)
