"""The CometD (Bayeux long-polling) channel that carries CancelRecord outcomes.

:class:`AckChannel` tells the sender, through :attr:`AckChannel.up`, whether the
subscription is known to be live: a request sent while it is not would have its
acknowledgement lost, so the sender waits. The protocol (what to send, what the
replies and advice mean) is :mod:`batch_cancel.gws.bayeux`; the HTTP side (bounded
POSTs on the run's aiohttp session) is :mod:`batch_cancel.gws.long_poll`. One task
polls; each poll's events go to ``on_messages`` as one batch, from that task (no task
or queue per message).

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
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp

from batch_cancel.exceptions import NotificationChannelLost, PollFailed
from batch_cancel.gws.bayeux import (
    CONNECT,
    DEFAULT_POLL_MARGIN,
    DEFAULT_POLL_TIMEOUT,
    Conversation,
    Message,
    PollBound,
)
from batch_cancel.gws.cancelling import cancel_and_wait
from batch_cancel.gws.long_poll import LongPollTransport
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
    and token are used from the next request on (a mapping that is the same object as
    last time is taken as unchanged). ``http`` gives the REST calls' aiohttp session to
    ride on (None: one of its own, with ``route``'s TLS context and proxy). A lost
    session is handshaken and re-subscribed by the protocol itself; if the channel
    still has not recovered after ``stall_reset`` seconds (a subscription refused, a
    server that advised ``reconnect: none``), a fresh Bayeux session is started.
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
        http: Callable[[], aiohttp.ClientSession | None] | None = None,
    ) -> None:
        self.url = url
        self.channels = channels
        self._on_messages = on_messages
        self._on_state = on_state
        self._stall_reset = stall_reset
        self._on_gap = on_gap
        # one for every Bayeux session this channel makes: liveness outlives a reset
        self.bound = PollBound(margin=poll_margin, default_timeout=poll_timeout)
        self._transport = LongPollTransport(url, route=route or Route(ssl=bool(verify_tls)),
                                            headers=headers, shared=http)  # fmt: skip
        self._conversation = Conversation(channels, self.bound)
        self._gap_since: float | None = None  # a session was lost; its gap is still open
        self.gaps = 0
        self.up = asyncio.Event()
        self.down_since: float | None = time.monotonic()
        self.handshakes = 0
        self.reconnects = 0
        self.resets = 0
        self.last_error = ""
        self._last_failure: PollFailed | None = None
        self._confirmed: set[str] = set()
        self._polled = False  # a poll of the current Bayeux session came back
        self._closing = False
        self._poller: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None

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
            host = host_port(self.url)
            problem = certificate_problem(exc, host)
            if problem is None and self._last_failure is not None:
                problem = certificate_problem(self._last_failure, host)
            if problem is not None:
                raise problem from None  # start() runs before anything is sent: exit 2
            reason = self.last_error or f"{type(exc).__name__}: {exc}".rstrip(": ")
            raise NotificationChannelLost(
                f"cannot subscribe to {', '.join(self.channels)} at {self.url}: {reason}"
            ) from exc
        if supervise:
            self._supervisor = asyncio.create_task(self.supervise(), name="cometd-supervisor")

    async def _open(self) -> None:
        self._poller = asyncio.create_task(self._polling(self._conversation), name="cometd-poll")
        await self.up.wait()

    async def _polling(self, conversation: Conversation) -> None:
        try:
            await self._poll(conversation)
        except Exception as exc:  # a bug of ours: said loudly; the supervisor starts anew
            log.exception("the CometD poll loop stopped")
            self.last_error = f"poll loop stopped: {type(exc).__name__}: {exc}"
            self._set_up(False, "the CometD poll loop stopped")

    async def supervise(self) -> None:
        """Start a new Bayeux session when the channel has not recovered by itself
        within ``stall_reset`` (longer after each reset, up to four times as long)."""
        while True:
            await asyncio.sleep(min(1.0, self._stall_reset / 4))
            if self.up.is_set() or self.outage() < self._stall_reset * (1 + self.resets % 4):
                continue
            self.resets += 1
            log.info("CometD did not recover in %.0f s (%s): starting a new Bayeux session",
                     self.outage(), self.last_error or "no answer")  # fmt: skip
            self._session_lost()
            await self._stop_polling()
            self._conversation = Conversation(self.channels, self.bound)
            self._confirmed.clear()
            self._polled = False
            try:
                await asyncio.wait_for(self._open(), self._stall_reset)
            except TimeoutError:
                continue

    async def _stop_polling(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            await _cancel_and_wait(poller)

    async def close(self) -> None:
        """Stop polling, and tell the server goodbye (bounded, best effort)."""
        self._closing = True
        if self._supervisor is not None:
            await _cancel_and_wait(self._supervisor)
        await self._stop_polling()
        goodbye = self._conversation.disconnect()
        if goodbye is not None:
            try:
                await self._transport.send(goodbye, min(self.bound.margin, 2.0))
            except PollFailed as exc:
                log.debug("CometD disconnect not answered: %s", exc)
            self._conversation.client_id = None
        await self._transport.close()
        self.up.clear()

    # -- the poll loop -------------------------------------------------------
    async def _poll(self, conversation: Conversation) -> None:
        """Send what the protocol asks, one request at a time, until it stops."""
        send = self._transport.send
        bound = self.bound
        while True:
            payload = conversation.request()
            if payload is None:
                self.last_error = self.last_error or "the server advised reconnect: none"
                self._set_up(False, "the server advised not to reconnect")
                return
            wait = conversation.delay(payload)
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                replies = await send(payload, bound.of(payload))
            except PollFailed as exc:
                if exc.timed_out and payload[0]["channel"] == CONNECT:
                    bound.polls_cut += 1
                conversation.failed(payload)
                self._failed(payload, exc)
                continue
            reply = conversation.answered(payload, replies)
            for message in reply.meta:
                self._observe(message)
            if not reply.settled:
                self._failed(payload, PollFailed(f"no reply to {payload[0]['channel']}"))
            if reply.events:
                try:
                    self._on_messages(reply.events)
                except Exception:  # a bad message must not kill the channel
                    log.exception("error while handling CometD messages")

    def _failed(self, payload: list[Message], exc: PollFailed) -> None:
        self._last_failure = exc
        self.last_error = f"{payload[0]['channel']} failed: {exc}"
        log.debug("CometD %s", self.last_error)
        # a failing long poll (network gap, server restart) also means 'not subscribed'
        self._set_up(False, "long poll failed, reconnecting")

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
        ok = bool(message.get("successful", False))
        if not ok:
            log.debug("CometD %s refused: %s", channel, message)
        if channel == "/meta/handshake":
            if ok:
                self.handshakes += 1
                log.debug("CometD handshake: Bayeux session %s", message.get("clientId"))
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
            # a poll that works again on the same Bayeux session keeps its subscriptions
            if self._confirmed and all(c in self._confirmed for c in self.channels):
                self._set_up(True, "long poll restored")
        elif channel == "/meta/connect":
            error = str(message.get("error") or "connect refused")
            self.last_error = error
            self._set_up(False, error)

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
