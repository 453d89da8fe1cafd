"""The Bayeux protocol state machine (gws/bayeux.py) on a fake clock: what it sends, in what
order, what the server's replies and advice make of it, and how long it waits. No I/O: the
transport and the real servers are exercised by test_cometd_liveness.py, test_state_machines.py,
tests/interop/ and the end-to-end runs."""

from __future__ import annotations

import itertools
from typing import Any

from fake_time import FakeTime

from batch_cancel.gws.bayeux import CONNECT, DISCONNECT, HANDSHAKE, SUBSCRIBE, Conversation, PollBound

CHANNELS = ("/v2/me/outbound", "/me/internal")


def conversation() -> tuple[Conversation, FakeTime]:
    t = FakeTime()
    return Conversation(CHANNELS, PollBound(margin=2.0, default_timeout=30.0, clock=t.clock)), t


def ok(sent: list[dict[str, Any]], **extra: Any) -> list[dict[str, Any]]:
    reply = {"channel": sent[0]["channel"], "successful": True, "id": sent[0]["id"], **extra}
    if sent[0]["channel"] == SUBSCRIBE:
        reply["subscription"] = sent[0]["subscription"]
    return [reply]


def refused(sent: list[dict[str, Any]], error: str, **extra: Any) -> list[dict[str, Any]]:
    return [{"channel": sent[0]["channel"], "successful": False, "error": error, **extra}]


def shake_hands(c: Conversation, client_id: str = "c1", **advice: Any) -> None:
    """The handshake and the first poll: the conversation then asks for its subscriptions."""
    shake = c.request()
    assert shake is not None and shake[0]["channel"] == HANDSHAKE
    c.answered(shake, ok(shake, clientId=client_id, **advice))
    first = c.request()
    assert first is not None and first[0]["channel"] == CONNECT
    c.answered(first, ok(first))


def open_session(c: Conversation, client_id: str = "c1") -> None:
    """Handshake, the first poll, every subscription: the conversation is then long-polling."""
    shake_hands(c, client_id, advice={"reconnect": "retry", "interval": 0, "timeout": 5000})
    for _ in CHANNELS:
        sub = c.request()
        assert sub is not None and sub[0]["channel"] == SUBSCRIBE
        c.answered(sub, ok(sub))
    assert c.subscribed


def test_a_session_opens_handshake_first_poll_at_once_then_each_subscription_then_long_polls() -> None:
    c, t = conversation()
    shake = c.request()
    assert shake == [{"channel": HANDSHAKE, "version": "1.0", "minimumVersion": "1.0",
                      "supportedConnectionTypes": ["long-polling"], "id": "1"}]  # fmt: skip
    c.answered(shake, ok(shake, clientId="c1", advice={"timeout": 5000, "interval": 0}))
    first = c.request()
    # the first poll after a handshake is answered at once: opening takes milliseconds
    assert first == [{"channel": CONNECT, "clientId": "c1", "connectionType": "long-polling",
                      "advice": {"timeout": 0}, "id": "2"}]  # fmt: skip
    assert c.bound.of(first) == 2.0  # its bound: the margin only
    t.advance(3.0)
    c.answered(first, ok(first))
    assert c.bound.last_completed == t.now
    subs = []
    for _ in CHANNELS:
        sub = c.request()
        assert sub is not None
        subs.append(sub[0]["subscription"])
        assert c.bound.of(sub) == 2.0
        c.answered(sub, ok(sub))
    assert subs == list(CHANNELS) and c.subscribed
    poll = c.request()
    assert poll is not None and poll[0]["channel"] == CONNECT and "advice" not in poll[0]
    assert c.bound.of(poll) == 7.0  # the server's advised 5 s plus the margin
    assert c.delay(poll) == 0.0


def test_a_polls_events_come_back_as_one_batch_with_the_connect_reply_apart() -> None:
    c, _ = conversation()
    open_session(c)
    poll = c.request()
    assert poll is not None
    events = [{"channel": "/v2/me/outbound", "data": {"referenceId": f"r{i}"}} for i in range(3)]
    reply = c.answered(poll, [events[0], events[1], *ok(poll), events[2]])
    assert reply.events == events and reply.settled
    assert [m["channel"] for m in reply.meta] == [CONNECT]


def test_the_advised_interval_is_milliseconds_waited_before_each_poll_only() -> None:
    c, _ = conversation()
    open_session(c)
    poll = c.request()
    assert poll is not None
    c.answered(poll, ok(poll, advice={"interval": 250}))
    poll = c.request()
    assert poll is not None and c.delay(poll) == 0.25
    c.answered(poll, ok(poll))


def test_402_without_advice_means_handshake_and_every_channel_is_subscribed_again() -> None:
    c, _ = conversation()
    open_session(c)
    poll = c.request()
    assert poll is not None
    reply = c.answered(poll, refused(poll, "402::unknown_client"))
    assert reply.settled and c.client_id is None
    shake = c.request()
    assert shake is not None and shake[0]["channel"] == HANDSHAKE
    assert c.delay(shake) == 0.0  # a single loss is mended at once
    c.answered(shake, ok(shake, clientId="c2"))
    first = c.request()
    assert first is not None and first[0]["advice"] == {"timeout": 0} and first[0]["clientId"] == "c2"
    c.answered(first, ok(first))
    again = []
    for _ in CHANNELS:
        sub = c.request()
        assert sub is not None
        again.append(sub[0]["subscription"])
        c.answered(sub, ok(sub))
    assert again == list(CHANNELS) and c.subscribed


def test_a_subscription_a_402_refused_is_asked_again_in_the_next_session() -> None:
    c, _ = conversation()
    shake_hands(c)
    sub = c.request()
    assert sub is not None and sub[0]["subscription"] == CHANNELS[0]
    c.answered(sub, refused(sub, "402::session_unknown", subscription=CHANNELS[0]))
    assert c.client_id is None
    open_session(c, "c2")  # asserts every channel is subscribed, the refused one included


def test_reconnect_advice_is_followed_retry_handshake_none() -> None:
    c, _ = conversation()
    open_session(c)
    poll = c.request()
    assert poll is not None
    c.answered(poll, refused(poll, "500::busy", advice={"reconnect": "retry", "interval": 0}))
    poll = c.request()
    assert poll is not None and poll[0]["channel"] == CONNECT and c.client_id == "c1"
    c.answered(poll, refused(poll, "403::gone", advice={"reconnect": "handshake"}))
    shake = c.request()
    assert shake is not None and shake[0]["channel"] == HANDSHAKE
    c.answered(shake, ok(shake, clientId="c2"))
    first = c.request()
    assert first is not None
    c.answered(first, refused(first, "403::go away", advice={"reconnect": "none"}))
    assert c.stopped and c.request() is None


def test_back_off_doubles_while_refused_and_ends_with_a_poll_that_works() -> None:
    """A server that forgets us as soon as it made us (handshake ok, every poll 402) is
    never hammered: the handshake succeeding forgives nothing, only a working poll does."""
    c, _ = conversation()
    waits = []
    for n in range(10):
        shake = c.request()
        assert shake is not None and shake[0]["channel"] == HANDSHAKE
        waits.append(c.delay(shake))
        c.answered(shake, ok(shake, clientId=f"c{n}"))
        first = c.request()
        assert first is not None
        c.answered(first, refused(first, "402::session_unknown",
                                  advice={"reconnect": "handshake", "interval": 0}))  # fmt: skip
    assert waits[:4] == [0.0, 0.0, 0.1, 0.2] and waits[-1] == 5.0
    assert all(b >= a for a, b in itertools.pairwise(waits))
    open_session(c, "ok")
    poll = c.request()
    assert poll is not None and c.delay(poll) == 0.0 and c.failures == 0


def test_a_failed_request_is_asked_again_and_the_first_poll_stays_quick() -> None:
    c, _ = conversation()
    shake = c.request()
    assert shake is not None
    c.failed(shake)  # a transport error: no client id yet, so handshake again
    shake = c.request()
    assert shake is not None and shake[0]["channel"] == HANDSHAKE and shake[0]["id"] == "2"
    c.answered(shake, ok(shake, clientId="c1"))
    first = c.request()
    assert first is not None
    c.failed(first)
    first = c.request()
    assert first is not None and first[0]["advice"] == {"timeout": 0}
    c.answered(first, ok(first))
    sub = c.request()
    assert sub is not None
    c.failed(sub)
    sub = c.request()
    assert sub is not None and sub[0]["subscription"] == CHANNELS[0]


def test_an_answer_without_a_reply_to_the_request_counts_as_failed() -> None:
    c, _ = conversation()
    open_session(c)
    poll = c.request()
    assert poll is not None
    before = c.bound.last_completed
    reply = c.answered(poll, [{"channel": "/v2/me/outbound", "data": {}}])
    assert not reply.settled and c.failures == 1 and reply.events
    assert c.bound.last_completed == before  # not a completed poll


def test_a_denied_subscription_is_asked_again_after_a_back_off() -> None:
    c, _ = conversation()
    shake_hands(c)
    for expected in (0.0, 0.0, 0.1):
        sub = c.request()
        assert sub is not None and sub[0]["subscription"] == CHANNELS[0]
        assert c.delay(sub) == expected
        c.answered(sub, refused(sub, "403::denied", subscription=CHANNELS[0]))
    assert c.client_id == "c1" and not c.subscribed


def test_disconnect_only_with_a_session() -> None:
    c, _ = conversation()
    assert c.disconnect() is None
    open_session(c)
    goodbye = c.disconnect()
    assert goodbye is not None and goodbye[0]["channel"] == DISCONNECT and goodbye[0]["clientId"] == "c1"
    assert c.answered(goodbye, []).settled  # no reply needed
