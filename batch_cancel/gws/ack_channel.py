"""The CometD (Bayeux long-polling) channel that carries CancelRecord outcomes.

:class:`AckChannel` tells the sender, through :attr:`AckChannel.up`, whether the
subscription is known to be live: a request sent while it is not would have its
acknowledgement lost, so the sender waits. The aiocometd adaptations it relies
on live in :mod:`batch_cancel.gws.cometd_client`.

Liveness, for the send side: :attr:`AckChannel.up` means subscribed *and* a poll of
that Bayeux session came back (subscribing alone works over a path no poll gets
through). Every long poll is bounded (the server's advised
timeout, or 30 s when it gives none, plus ``poll_margin``), so a poll over a half-open
connection ends, the channel goes down and polls again. :attr:`AckChannel.last_poll_completed`
is when a poll last completed (monotonic): an outcome published before it was
delivered; a row accepted after it has no such guarantee yet. When the client had to
handshake again (its Bayeux session lost, so whatever the server had queued for it is
gone), ``on_gap`` is told, once subscribed again, the :class:`Gap`: outcomes published
between ``since`` and ``until`` may be lost, so rows still awaiting one that were sent
before ``until`` are to be asked again under their same referenceId.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiocometd_noloop import ConnectionType

from batch_cancel.exceptions import NotificationChannelLost
from batch_cancel.gws import json_codec
from batch_cancel.gws.cancelling import cancel_and_wait
from batch_cancel.gws.cometd_client import (
    DEFAULT_POLL_MARGIN,
    DEFAULT_POLL_TIMEOUT,
    CometdClient,
    Message,
    PollBound,
    SessionExtension,
)
from batch_cancel.gws.network import Route, host_port
from batch_cancel.gws.responses import certificate_problem

__all__ = ["AckChannel", "Gap"]

log = logging.getLogger("batch_cancel.cometd")


@dataclass(frozen=True)
class Gap:
    """Outcomes published between ``since`` and ``until`` (monotonic) may be lost: the
    Bayeux session that would have carried them was lost, and a new one subscribed at
    ``until``. ``since`` is when a poll last completed on the lost session."""

    since: float
    until: float


class AckChannel:
    """A self-healing CometD subscription; every event message goes to ``on_messages``.

    ``headers`` is called before every Bayeux request, so a re-login's new cookie
    and token are used from the next request on. aiocometd re-handshakes and
    re-subscribes by itself after a lost session; if it still has not recovered
    after ``stall_reset`` seconds (a poll held forever, a reconnect loop that gave
    up), the client is thrown away and a fresh one handshakes and subscribes.
    """

    def __init__(
        self,
        url: str,
        *,
        channels: tuple[str, ...],
        headers: Callable[[], Mapping[str, str]],
        on_messages: Callable[[list[Message]], None],
        verify_tls: bool = True,
        on_state: Callable[[bool, str], None] | None = None,
        stall_reset: float = 10.0,
        route: Route | None = None,
        on_gap: Callable[[Gap], None] | None = None,
        poll_margin: float = DEFAULT_POLL_MARGIN,
        poll_timeout: float = DEFAULT_POLL_TIMEOUT,
    ) -> None:
        self.url = url
        self.channels = channels
        self._header_source = headers
        self._on_messages = on_messages
        self._on_state = on_state
        self._route = route or Route(ssl=bool(verify_tls))
        self._stall_reset = stall_reset
        self._on_gap = on_gap
        # one for every client this channel makes: liveness outlives a client reset
        self.bound = PollBound(margin=poll_margin, default_timeout=poll_timeout)
        self._gap_since: float | None = None  # a session was lost; its gap is still open
        self.gaps = 0
        self.up = asyncio.Event()
        self.down_since: float | None = time.monotonic()
        self.handshakes = 0
        self.reconnects = 0
        self.resets = 0
        self.last_error = ""
        self._confirmed: set[str] = set()
        self._polled = False  # a poll of the current Bayeux session came back
        self._closing = False
        self._client = self._new_client()
        self._tasks: list[asyncio.Task[None]] = []
        self._supervisor: asyncio.Task[None] | None = None

    def _new_client(self) -> CometdClient:
        return CometdClient(
            self.url,
            ConnectionType.LONG_POLLING,
            extensions=[SessionExtension(lambda: self._client, self._header_source, self._observe)],
            max_pending_count=0,  # unbounded: we drain in batches, never block the poll
            route=self._route,
            bound=self.bound,
            connection_timeout=0,
            json_loads=json_codec.loads,  # a long poll's batch of messages: the hot decode
        )

    # -- lifecycle -----------------------------------------------------------
    async def start(self, timeout: float = 30.0, *, supervise: bool = True) -> None:
        """Handshake, subscribe and return once every channel is confirmed.

        With ``supervise=False`` the caller runs :meth:`supervise` itself (the send
        phase does, in its task group, so a supervisor that dies ends the run).
        """
        try:
            await asyncio.wait_for(self._open(), timeout)
        except (TimeoutError, Exception) as exc:
            await self.close()
            problem = certificate_problem(exc, host_port(self.url))
            if problem is not None:
                raise problem from None  # start() runs before anything is sent: exit 2
            reason = self.last_error or f"{type(exc).__name__}: {exc}".rstrip(": ")
            raise NotificationChannelLost(
                f"cannot subscribe to {', '.join(self.channels)} at {self.url}: {reason}"
            ) from exc
        self._start_tasks()
        if supervise:
            self._supervisor = asyncio.create_task(self.supervise(), name="cometd-supervisor")

    def _start_tasks(self) -> None:
        self._tasks = [
            asyncio.create_task(self._drain(self._client), name="cometd-drain"),
            asyncio.create_task(self._watch_transport(self._client), name="cometd-watch"),
        ]

    async def _open(self) -> None:
        await self._client.open()
        for channel in self.channels:
            await self._client.subscribe(channel)
        await self.up.wait()

    async def supervise(self) -> None:
        """Replace a client that has not recovered by itself within ``stall_reset``."""
        while True:
            await asyncio.sleep(min(1.0, self._stall_reset / 4))
            if self.up.is_set() or self.outage() < self._stall_reset * (1 + self.resets % 4):
                continue
            self.resets += 1
            log.info("CometD did not recover in %.0f s (%s): starting a new client",
                     self.outage(), self.last_error or "no answer")  # fmt: skip
            self._session_lost()
            await self._stop_client()
            self._client = self._new_client()
            self._confirmed.clear()
            self._polled = False
            try:
                await asyncio.wait_for(self._open(), self._stall_reset)
            except (TimeoutError, Exception) as exc:
                self.last_error = self.last_error or f"{type(exc).__name__}: {exc}"
                continue
            finally:
                self._start_tasks()

    async def _stop_client(self) -> None:
        for task in self._tasks:
            await _cancel_and_wait(task)
        self._tasks.clear()
        client = self._client
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 5)
        transport = client.transport
        if client.closed and transport is not None:
            # after a failed open() the client thinks it is closed, yet its transport
            # still follows reconnect advice in the background: stop it too
            with contextlib.suppress(Exception):
                await asyncio.wait_for(transport.disconnect(), 5)
            with contextlib.suppress(Exception):
                await client._close_http_session()

    async def close(self) -> None:
        self._closing = True
        if self._supervisor is not None:
            await _cancel_and_wait(self._supervisor)
        await self._stop_client()
        self.up.clear()

    # -- state ---------------------------------------------------------------
    def _set_up(self, up: bool, reason: str) -> None:
        if up == self.up.is_set() or self._closing:
            return
        if up:
            self.up.set()
            self.down_since = None
            self._gap_closed()
        else:
            self.up.clear()
            self.down_since = time.monotonic()
            self.reconnects += 1
        if self._on_state is not None:
            self._on_state(up, reason)

    def _observe(self, message: Message) -> None:
        channel = message.get("channel")
        if not isinstance(channel, str) or not channel.startswith("/meta/"):
            return
        ok = bool(message.get("successful", False))
        if not ok:
            log.debug("CometD %s refused: %s", channel, message)
        if channel == "/meta/handshake":
            if ok:
                self.handshakes += 1
                self._confirmed.clear()
                self._polled = False
                if self.handshakes > 1:
                    self._session_lost()
                    self._set_up(False, "re-handshake: subscriptions must be renewed")
            else:
                self.last_error = str(message.get("error") or "handshake refused")
        elif channel == "/meta/subscribe":
            subs = message.get("subscription")
            names = subs if isinstance(subs, list) else [subs]
            if ok:
                self._confirmed.update(n for n in names if isinstance(n, str))
                # up only once a poll of this Bayeux session came back too: subscribing
                # works over a half-open path that no outcome would come back through
                if self._polled and all(c in self._confirmed for c in self.channels):
                    self._set_up(True, "subscribed")
            else:
                self.last_error = str(message.get("error") or "subscribe refused")
        elif channel == "/meta/connect" and ok:
            self._polled = True
            self.bound.completed()
            # a poll that works again on the same Bayeux session keeps its subscriptions
            if self._confirmed and all(c in self._confirmed for c in self.channels):
                self._set_up(True, "long poll restored")
        elif channel == "/meta/connect":
            error = str(message.get("error") or "connect refused")
            self.last_error = error
            advice = message.setdefault("advice", {})
            if isinstance(advice, dict) and error.startswith("402") and "reconnect" not in advice:
                advice["reconnect"] = "handshake"
            self._set_up(False, error)

    async def _watch_transport(self, client: CometdClient) -> None:
        """A failing long poll (network gap, server restart) also means 'not subscribed'."""
        from aiocometd_noloop.constants import TransportState

        transport = client.transport
        if transport is None:
            return
        while True:
            await transport.wait_for_state(TransportState.CONNECTING)
            if transport.state == TransportState.CONNECTING:
                self._set_up(False, "long poll failed, reconnecting")
                self.last_error = "long poll failed"
            await transport.wait_for_state(TransportState.CONNECTED)

    async def _drain(self, client: CometdClient) -> None:
        queue = client.queue
        if queue is None:
            return
        while True:
            first = await queue.get()
            batch = [first]
            while not queue.empty():
                batch.append(queue.get_nowait())
            try:
                self._on_messages(batch)
            except Exception:  # a bad message must not kill the channel
                log.exception("error while handling CometD messages")

    def _session_lost(self) -> None:
        """A new Bayeux session: what the server queued for the old one is gone."""
        if self._gap_since is None:
            self._gap_since = self.bound.last_completed

    def _gap_closed(self) -> None:
        since, self._gap_since = self._gap_since, None
        if since is None:
            return
        gap = Gap(since, time.monotonic())
        self.gaps += 1
        log.info("CometD subscribed again: outcomes published in the last %.1f s may be lost",
                 gap.until - gap.since)  # fmt: skip
        if self._on_gap is not None:
            self._on_gap(gap)

    @property
    def last_poll_completed(self) -> float:
        """Monotonic time the last long poll completed (the server answered it)."""
        return self.bound.last_completed

    def heard_since(self, moment: float) -> bool:
        """A poll completed at or after ``moment`` (monotonic). A row whose deadline
        passes while this is False for its acceptance time was not heard about because
        the channel was deaf, not because GWS was silent: a gap, not a time-out."""
        return self.bound.last_completed >= moment

    @property
    def poll_bound(self) -> float:
        """Seconds a long poll may take before it is given up as half-open."""
        return self.bound.poll

    def silent(self) -> bool:
        """No poll completed within a poll's bound: the channel may be deaf (a half-open
        poll not yet cut, or none getting through), whatever :attr:`up` says."""
        return self.bound.silent_for() > self.bound.poll

    def outage(self) -> float:
        """Seconds the channel has been down (0 while it is up)."""
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since


async def _cancel_and_wait(task: asyncio.Task[None]) -> None:
    await cancel_and_wait(task, lambda exc: log.debug("CometD task %s ended with %r while closing",
                                                      task.get_name(), exc))  # fmt: skip
