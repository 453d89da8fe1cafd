"""The Bayeux protocol as a long-polling client speaks it: pure, no I/O, no clock of its own.

:class:`Conversation` decides the next request (handshake, the first connect, the
subscriptions, then long polls), reads the server's replies and advice, and says how
long to wait before the next request; the transport (``gws/long_poll.py``) only POSTs
what it is given. What it keeps from the CometD client it replaces, and why:

* ``supportedConnectionTypes: ["long-polling"]`` on every handshake (WebSocket support
  varies by GWS deployment);
* ``advice: {timeout: 0}`` on the first ``/meta/connect`` after each handshake, so
  opening (and re-opening) takes milliseconds instead of a whole long poll;
* ``advice.interval`` (milliseconds) waited before the next poll, and a back-off while
  the server refuses us or cannot be reached, so a lost session never turns into a hot
  handshake loop;
* ``advice.reconnect``: ``retry`` polls again, ``handshake`` starts a new session, ``none``
  stops; a ``402`` without advice (``unknown_client``, ``session_unknown``) means handshake;
* every handshake re-subscribes *every* channel, including one whose subscribe a 402
  refused: a lost session must never cost a subscription;
* :class:`PollBound`: every request bounded (a long poll by the server's advised
  ``timeout``, or a default when it gives none, plus a margin; any other request by the
  margin), and when a poll last completed, so the owner can tell a silent channel from
  a quiet one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeGuard

__all__ = ["CONNECT", "DEFAULT_POLL_MARGIN", "DEFAULT_POLL_TIMEOUT", "DISCONNECT", "HANDSHAKE",
           "SUBSCRIBE", "Conversation", "Message", "PollBound", "Reply"]  # fmt: skip

Message = dict[str, Any]

HANDSHAKE = "/meta/handshake"
CONNECT = "/meta/connect"
SUBSCRIBE = "/meta/subscribe"
DISCONNECT = "/meta/disconnect"
LONG_POLLING = "long-polling"

# CometD's own conventions: a server holds a long poll for 30 s unless it advises
# otherwise, and its JavaScript client allows a request maxNetworkDelay (10 s) on top
DEFAULT_POLL_TIMEOUT = 30.0
DEFAULT_POLL_MARGIN = 10.0

# while the server refuses us (or cannot be reached): 0.05 s, doubling, at most 5 s
_BACKOFF_FIRST = 0.05
_BACKOFF_CAP = 5.0


class PollBound:
    """How long a Bayeux request may take, and when a long poll last completed.

    A ``/meta/connect`` is held by the server for the ``timeout`` it asks (``advice``
    in the message itself, as after a handshake), else for the server's advised
    timeout, else for ``default_timeout``; then ``margin`` seconds for the network.
    Any other request (handshake, subscribe) is answered at once: ``margin``.
    ``last_completed`` is the monotonic time of the last poll the server answered
    successfully: whatever it published before then was delivered.
    """

    def __init__(self, *, margin: float = DEFAULT_POLL_MARGIN,
                 default_timeout: float = DEFAULT_POLL_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.margin = margin
        self.default_timeout = default_timeout
        self.advised: float | None = None  # seconds: the server's last advice.timeout
        self._clock = clock
        self.last_completed = clock()
        self.polls_cut = 0  # polls given up after their bound

    @property
    def poll(self) -> float:
        """The bound of a long poll that asks for no timeout of its own."""
        held = self.default_timeout if self.advised is None else self.advised
        return held + self.margin

    def of(self, payload: list[Message]) -> float:
        """The bound of one request carrying ``payload``."""
        for message in payload:
            if message.get("channel") != CONNECT:
                continue
            advice = message.get("advice")
            asked = advice.get("timeout") if isinstance(advice, dict) else None
            if _is_number(asked):
                return max(0.0, asked / 1000.0) + self.margin
            return self.poll
        return self.margin

    def advice(self, advice: Message) -> None:
        """Keep a server's ``advice.timeout`` (milliseconds)."""
        timeout = advice.get("timeout")
        if _is_number(timeout) and timeout >= 0:
            self.advised = timeout / 1000.0

    def completed(self) -> None:
        self.last_completed = self._clock()

    def silent_for(self) -> float:
        """Seconds since a poll last completed."""
        return self._clock() - self.last_completed


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value  # not NaN


class Reply:
    """What one answer held: the meta replies (for the owner's bookkeeping), the events
    in the order the server sent them (handed on as one batch), and whether the request
    itself was answered (``settled``; if not, it counts as failed)."""

    __slots__ = ("events", "meta", "settled")

    def __init__(self, meta: list[Message], events: list[Message], settled: bool) -> None:
        self.meta = meta
        self.events = events
        self.settled = settled


class Conversation:
    """One client's side of Bayeux over long polling, across any number of sessions.

    The transport asks :meth:`request` for the next payload, waits :meth:`delay`
    first, and gives back what came: :meth:`answered` with the decoded replies, or
    :meth:`failed` when none came (a transport error, a bound reached, a body that is
    not Bayeux). :attr:`stopped` once the server advised ``reconnect: none``.
    """

    failures: int

    def __init__(self, channels: Iterable[str], bound: PollBound) -> None:
        self.channels = tuple(channels)
        self.bound = bound
        self.client_id: str | None = None
        self.stopped = False
        self.failures = 0  # consecutive refusals or failed requests
        self._next_id = 0
        self._first_poll = False  # the next connect is the first of this session
        self._unsubscribed: list[str] = []  # wanted, not yet asked for in this session
        self._interval = 0.0  # seconds: the server's advice.interval
        self._reconnect = "retry"

    # -- what to send ---------------------------------------------------------
    def request(self) -> list[Message] | None:
        """The next payload, or None once stopped. The order after a handshake (the
        first connect, answered at once, then the subscriptions, then long polls) has
        the session polled before it is subscribed, as the owner's liveness wants."""
        if self.stopped:
            return None
        if self.client_id is None:
            return [{"channel": HANDSHAKE, "version": "1.0", "minimumVersion": "1.0",
                     "supportedConnectionTypes": [LONG_POLLING], "id": self._id()}]  # fmt: skip
        if self._first_poll:
            return [{"channel": CONNECT, "clientId": self.client_id, "connectionType": LONG_POLLING,
                     "advice": {"timeout": 0}, "id": self._id()}]  # fmt: skip
        if self._unsubscribed:
            return [{"channel": SUBSCRIBE, "clientId": self.client_id,
                     "subscription": self._unsubscribed[0], "id": self._id()}]  # fmt: skip
        return [{"channel": CONNECT, "clientId": self.client_id, "connectionType": LONG_POLLING,
                 "id": self._id()}]  # fmt: skip

    def disconnect(self) -> list[Message] | None:
        """The goodbye, when there is a session to end."""
        if self.client_id is None:
            return None
        return [{"channel": DISCONNECT, "clientId": self.client_id, "id": self._id()}]

    def delay(self, payload: list[Message]) -> float:
        """Seconds to wait before sending ``payload``: the advised interval before a poll
        (a first poll is exempt: it only confirms the session), and a doubling back-off
        from the second failure in a row on."""
        channel = payload[0].get("channel")
        wait = self._interval if channel == CONNECT and "advice" not in payload[0] else 0.0
        if self.failures > 1:
            wait = max(wait, min(_BACKOFF_CAP, _BACKOFF_FIRST * 2 ** (self.failures - 1)))
        return wait

    def _id(self) -> str:
        self._next_id += 1
        return str(self._next_id)

    # -- what came back -------------------------------------------------------
    def answered(self, payload: list[Message], replies: list[Any]) -> Reply:
        """Take the server's replies to ``payload``. A reply to the request itself
        missing counts as a failure; events are handed back whatever came with them."""
        meta: list[Message] = []
        events: list[Message] = []
        asked = payload[0]["channel"]
        settled = False
        for reply in replies:
            if not isinstance(reply, dict):
                continue
            channel = reply.get("channel")
            if not isinstance(channel, str) or not channel.startswith("/meta/"):
                events.append(reply)
                continue
            meta.append(reply)
            if channel == asked:
                settled = True
            self._meta(reply, payload[0])
        if not settled and asked != DISCONNECT:
            self.failed(payload)
        return Reply(meta, events, settled or asked == DISCONNECT)

    def failed(self, payload: list[Message]) -> None:
        """No (usable) answer to ``payload``: ask again, the same thing, after a back-off."""
        self.failures += 1
        first = payload[0]
        if first.get("channel") == CONNECT and "advice" in first:
            self._first_poll = True
        elif first.get("channel") == SUBSCRIBE:
            self._want(first.get("subscription"))

    def _want(self, channel: object) -> None:
        if isinstance(channel, str) and channel in self.channels and channel not in self._unsubscribed:
            self._unsubscribed.insert(0, channel)

    def _meta(self, reply: Message, sent: Message) -> None:
        channel = reply["channel"]
        ok = reply.get("successful") is True
        advice = reply.get("advice")
        if isinstance(advice, dict):
            self._advice(advice, channel)
        if channel == HANDSHAKE:
            client_id = reply.get("clientId")
            if ok and isinstance(client_id, str):
                # failures are not forgiven yet: only a poll that works shows a session
                # that works (a server that forgets us at once must not be hammered)
                self.client_id = client_id
                self._first_poll = True
                # a new session has no subscriptions: every channel is asked for again
                self._unsubscribed = list(self.channels)
                self._reconnect = "retry"
            else:
                self.failures += 1
                self.client_id = None
                self._stop_if_told()
        elif channel == CONNECT:
            if sent.get("channel") == CONNECT and "advice" in sent:
                self._first_poll = False
            if ok:
                self.failures = 0
                self.bound.completed()
            else:
                self._refused(reply)
        elif channel == SUBSCRIBE and not ok:
            if _session_unknown(reply):
                self._want(reply.get("subscription") or sent.get("subscription"))
                self._refused(reply)
            else:
                # refused for another reason (denied): asked again after the back-off, and
                # the owner (which sees it unconfirmed) may start a new session meanwhile
                self.failures += 1
        elif channel == SUBSCRIBE and sent.get("channel") == SUBSCRIBE:
            names = reply.get("subscription")
            for name in names if isinstance(names, list) else [names]:
                if name in self._unsubscribed:
                    self._unsubscribed.remove(name)

    def _advice(self, advice: Message, channel: str) -> None:
        if channel in (HANDSHAKE, CONNECT):
            self.bound.advice(advice)
        interval = advice.get("interval")
        if _is_number(interval) and interval >= 0:
            self._interval = interval / 1000.0
        reconnect = advice.get("reconnect")
        if reconnect in ("retry", "handshake", "none"):
            self._reconnect = reconnect

    def _refused(self, reply: Message) -> None:
        """A connect (or subscribe) refused: follow the reconnect advice; a 402 without
        it means the server lost our session, so handshake."""
        self.failures += 1
        advice = reply.get("advice")
        told = isinstance(advice, dict) and advice.get("reconnect") in ("retry", "handshake", "none")
        if not told and _session_unknown(reply):
            self._reconnect = "handshake"
        if self._reconnect == "handshake":
            self.client_id = None
            self._first_poll = False
        self._stop_if_told()

    def _stop_if_told(self) -> None:
        if self._reconnect == "none":
            self.stopped = True

    @property
    def subscribed(self) -> bool:
        """Every channel asked for in this session (confirmation is the owner's to see)."""
        return self.client_id is not None and not self._unsubscribed


def _session_unknown(reply: Message) -> bool:
    return str(reply.get("error", "")).startswith("402")
