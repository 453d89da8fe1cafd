"""Unit tests of the send phase's state machines on a fake clock: Outcomes, Sender, Recorder,
and the AckChannel's re-subscription after a 402 (over real Bayeux, it has no clock of its own)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from fake_time import FakeTime
from helpers import PASSWORD, USER

from batch_cancel.config import Credentials, GwsConfig
from batch_cancel.exceptions import JournalUnwritable, NotWritten, SessionExpired, TransientError
from batch_cancel.gws.ack_channel import AckChannel
from batch_cancel.gws.session import Answer, GwsSession
from batch_cancel.journal.rows import Status
from batch_cancel.journal.store import RECORD_COLUMNS, Journal
from batch_cancel.journal.writer import JournalWriter, Recorder
from batch_cancel.send.outcomes import Outcomes, Record
from batch_cancel.send.pacer import Pacer
from batch_cancel.send.sender import Sender, SenderSettings
from batch_cancel.simulator import GwsSimulator, SimulatorConfig

ACK = "RecordCancelAcknowledge"
TIMEOUT = 30.0


def record(row: int) -> Record:
    return Record(row=row, reference_id=f"ref-{row}", phone_sent=f"21255501{row:02d}",
                  application_id=134, campaign="Campaign1", calling_list="CallingList1",
                  device_path="/devices/d1", chain_attribute=None)  # fmt: skip


def message(ref: str, notification: str = ACK) -> dict[str, Any]:
    return {"channel": "/v2/me/outbound", "data": {"referenceId": ref, "notificationType": notification}}


class MatcherBench:
    """A matcher on a fake clock, its recorder without a journal, and what it asked to resend."""

    def __init__(self, max_attempts: int = 5) -> None:
        self.t = FakeTime()
        self.recorder = Recorder(None, clock=self.t.clock, monotonic=self.t.clock)
        self.resent: list[Record] = []
        self.matcher = Outcomes(operation="CancelRecord", ack_timeout=TIMEOUT, recorder=self.recorder,
                               clock=self.t.clock, wall=self.t.clock, resend=self.resent.append,
                               max_attempts=max_attempts)  # fmt: skip

    def send(self, rec: Record) -> None:
        """What the sender does around one POST, up to GWS's answer."""
        self.matcher.posting(rec)

    def later(self, seconds: float) -> None:
        self.t.now += seconds
        self.matcher.expire()

    def state_of(self, rec: Record) -> Status:
        """The state the recorder would commit for the record."""
        return next(s.status for s in self.recorder.pending_states() if s.row == rec.row)


# -- Matcher ---------------------------------------------------------------------------------
def test_matcher_ack_before_the_http_answer_settles_the_record() -> None:
    b, rec = MatcherBench(), record(1)
    b.send(rec)
    b.matcher.on_messages([message(rec.reference_id)])  # GWS published before it answered
    assert rec.status == Status.CANCELLED
    b.matcher.accepted(rec)  # the HTTP answer, late: no deadline is started
    assert rec.deadline is None
    b.later(TIMEOUT * 2)
    assert rec.status == Status.CANCELLED
    assert b.matcher.awaiting() == 0
    assert dict(b.recorder.outcomes) == {Status.CANCELLED: 1}


def test_matcher_duplicate_acks_settle_a_record_once() -> None:
    b, rec = MatcherBench(), record(1)
    b.send(rec)
    b.matcher.accepted(rec)
    b.matcher.on_messages([message(rec.reference_id)])
    b.matcher.on_messages([message(rec.reference_id), message(rec.reference_id, "RecordCancelError")])
    assert rec.status == Status.CANCELLED
    assert b.matcher.duplicate_acks == 2
    assert dict(b.recorder.outcomes) == {Status.CANCELLED: 1}


def test_matcher_late_ack_after_timed_out_upgrades_to_cancelled() -> None:
    b, rec = MatcherBench(), record(1)
    b.send(rec)
    b.matcher.accepted(rec)
    b.later(TIMEOUT - 0.01)
    assert rec.status == Status.SENT
    b.later(0.02)
    assert rec.status == Status.TIMED_OUT
    assert b.state_of(rec) == Status.TIMED_OUT
    assert b.recorder.outcomes[Status.TIMED_OUT] == 1
    b.matcher.on_messages([message(rec.reference_id)])  # before the run ends
    assert rec.status == Status.CANCELLED
    assert b.state_of(rec) == Status.CANCELLED  # what the journal gets
    assert b.recorder.outcomes[Status.CANCELLED] == 1
    assert b.recorder.outcomes[Status.TIMED_OUT] == 0
    assert b.matcher.duplicate_acks == 0


def test_matcher_late_failure_after_timed_out_stays_timed_out() -> None:
    b, rec = MatcherBench(), record(1)
    b.send(rec)
    b.matcher.accepted(rec)
    b.later(TIMEOUT + 1)
    b.matcher.on_messages([message(rec.reference_id, "RecordCancelError")])
    assert rec.status == Status.TIMED_OUT
    assert b.recorder.outcomes[Status.TIMED_OUT] == 1


def test_matcher_gap_resend_once_per_gap_within_max_attempts() -> None:
    b, rec = MatcherBench(max_attempts=2), record(1)
    b.send(rec)
    b.matcher.channel_changed(False)  # the ack may be published into the gap
    b.matcher.accepted(rec)
    b.matcher.channel_changed(True)
    b.later(TIMEOUT + 0.1)
    assert b.resent == [rec]  # asked again with the same referenceId, not timed out
    assert rec.status == Status.SENT and b.matcher.gap_resends == 1
    b.send(rec)  # the resend: attempt 2 of 2
    b.matcher.channel_changed(False)
    b.matcher.accepted(rec)
    b.matcher.channel_changed(True)
    b.later(TIMEOUT + 0.1)
    assert b.resent == [rec]  # no third POST: --max-attempts bounds gap resends too
    assert rec.status == Status.TIMED_OUT


def test_matcher_no_resend_without_a_gap() -> None:
    b, rec = MatcherBench(), record(1)
    b.send(rec)
    b.matcher.accepted(rec)
    b.later(TIMEOUT + 0.1)
    assert b.resent == [] and rec.status == Status.TIMED_OUT


# -- Sender ----------------------------------------------------------------------------------
class ScriptedGws:
    """GWS as the sender sees it, on the fake clock: each referenceId answers from its
    script ("500", "429:<retry-after>", "401", then "ok"), and an "ok" is acknowledged."""

    def __init__(self, t: FakeTime, scripts: dict[str, list[str]], service: float = 0.005) -> None:
        self.t = t
        self.scripts = scripts
        self.service = service
        self.generation = 0
        self.posts: list[tuple[float, str]] = []
        self.answers: list[tuple[float, str, str]] = []
        self.on_ack: Callable[[list[dict[str, Any]]], None] = lambda m: None

    async def post_record(self, body: Mapping[str, Any]) -> Answer:
        ref = str(body["referenceId"])
        script = self.scripts.get(ref)
        if script and script[0] == "unwritten":  # the fleet's write fence stopped it: GWS saw nothing
            script.pop(0)
            await self.t.sleep(0)
            raise NotWritten("not written: sending is held")
        self.posts.append((self.t.now, ref))
        await self.t.sleep(self.service)
        script = self.scripts.get(ref)
        step = script.pop(0) if script else "ok"
        self.answers.append((self.t.now, ref, step))
        if step == "500":
            raise TransientError("500 Internal Server Error", http_status=500)
        if step.startswith("429"):
            raise TransientError("429 Too Many Requests", http_status=429,
                                 retry_after=float(step.split(":")[1]))  # fmt: skip
        if step == "401":
            raise SessionExpired("401 Unauthorized", http_status=401)
        # the ack comes over CometD just after the HTTP answer
        asyncio.get_running_loop().call_soon(self.on_ack, [message(ref)])
        return Answer(200, 0, {"statusCode": 0})

    async def relogin(self, seen_generation: int) -> None:
        if seen_generation == self.generation:
            await self.t.sleep(0.01)
            self.generation += 1

    def sent(self, ref: str) -> int:
        return sum(1 for _, r in self.posts if r == ref)


class UpChannel:
    def __init__(self) -> None:
        self.up = asyncio.Event()
        self.up.set()

    def outage(self) -> float:
        return 0.0


async def run_sender(scripts: dict[str, list[str]], n: int, *, concurrency: int,
                     max_attempts: int) -> tuple[ScriptedGws, list[Record], Sender, FakeTime]:
    t = FakeTime()
    gws = ScriptedGws(t, scripts)
    recorder = Recorder(None, clock=t.clock, monotonic=t.clock, sleep=t.sleep)
    senders: list[Sender] = []
    matcher = Outcomes(operation="CancelRecord", ack_timeout=TIMEOUT, recorder=recorder,
                      clock=t.clock, wall=t.clock, resend=lambda r: senders[0].resend(r),
                      max_attempts=max_attempts)  # fmt: skip
    gws.on_ack = matcher.on_messages
    sender = Sender(SenderSettings("CancelRecord", concurrency, max_attempts, max_outage=300.0),
                    session=gws, channel=UpChannel(), outcomes=matcher, recorder=recorder,
                    pacer=Pacer(0, clock=t.clock, sleep=t.sleep), stop=asyncio.Event(),
                    clock=t.clock, wall=t.clock, sleep=t.sleep)  # fmt: skip
    senders.append(sender)
    records = [record(i) for i in range(1, n + 1)]

    async def feed() -> AsyncIterator[Record]:
        for rec in records:
            yield rec

    await t.run(sender.run(feed()))
    return gws, records, sender, t


async def test_a_post_the_write_fence_stopped_is_no_attempt_and_no_doubt() -> None:
    """A fleet worker's gate shut between its pacer and the write: the POST stopped before
    it was written counts as nothing sent (no attempt, not in doubt, no retry counted), and
    the row goes again under the same referenceId once it may."""
    gws, records, sender, _ = await run_sender({"ref-1": ["unwritten", "unwritten"]}, 2, concurrency=2,
                                               max_attempts=3)  # fmt: skip
    rec = records[0]
    assert gws.sent("ref-1") == 1 and rec.status == Status.CANCELLED
    assert (rec.attempts, rec.counted_attempts, rec.doubt) == (1, 0, False)
    assert (sender.not_written, sender.retries, sender.requests) == (2, 0, 2)


async def test_sender_gives_up_after_max_attempts_posts() -> None:
    gws, records, sender, _ = await run_sender({"ref-1": ["500"] * 10}, 3, concurrency=2,
                                               max_attempts=3)  # fmt: skip
    assert gws.sent("ref-1") == 3
    assert records[0].status == Status.FAILED
    assert records[0].error is not None and records[0].error.startswith("gave up after 3 attempts")
    assert [r.status for r in records[1:]] == [Status.CANCELLED] * 2
    assert sender.retries == 2


async def test_sender_session_errors_do_not_count_as_attempts() -> None:
    gws, records, sender, _ = await run_sender({"ref-1": ["401", "401"]}, 1, concurrency=1,
                                               max_attempts=1)  # fmt: skip
    assert gws.sent("ref-1") == 3
    assert records[0].status == Status.CANCELLED
    assert sender.relogins == 2 and gws.generation == 2


async def test_sender_429_pauses_every_worker_for_retry_after() -> None:
    gws, records, _, _ = await run_sender({"ref-1": ["429:2"]}, 12, concurrency=4, max_attempts=3)
    throttled = next(at for at, ref, step in gws.answers if step.startswith("429"))
    after = [at for at, _ in gws.posts if at >= throttled]
    assert after, "nothing was sent after the pause"
    assert min(after) >= throttled + 2.0  # no worker sent during the shared pause
    assert gws.sent("ref-1") == 2
    assert all(r.status == Status.CANCELLED for r in records)


class HangingGws:
    """Processes every POST (its ack is published at once) and never answers it."""

    def __init__(self, on_ack: Callable[[list[dict[str, Any]]], None]) -> None:
        self.generation = 0
        self.posts: list[str] = []
        self.on_ack = on_ack

    async def post_record(self, body: Mapping[str, Any]) -> Answer:
        self.posts.append(str(body["referenceId"]))
        asyncio.get_running_loop().call_soon(self.on_ack, [message(str(body["referenceId"]))])
        await asyncio.Event().wait()
        raise AssertionError("never answered")

    async def relogin(self, seen_generation: int) -> None:
        raise AssertionError("no session errors here")


def _hanging_sender(n: int) -> tuple[HangingGws, Sender, list[Record]]:
    recorder = Recorder(None, clock=time.time, monotonic=time.monotonic)
    matcher = Outcomes(operation="CancelRecord", ack_timeout=TIMEOUT, recorder=recorder,
                      clock=time.monotonic, wall=time.time, resend=lambda r: None,
                      max_attempts=3)  # fmt: skip
    gws = HangingGws(matcher.on_messages)
    sender = Sender(SenderSettings("CancelRecord", n, 3, max_outage=300.0, request_timeout=600.0),
                    session=gws, channel=UpChannel(), outcomes=matcher, recorder=recorder,
                    pacer=Pacer(0, clock=time.monotonic, sleep=asyncio.sleep), stop=asyncio.Event(),
                    clock=time.monotonic, wall=time.time)  # fmt: skip
    return gws, sender, [record(i) for i in range(1, n + 1)]


async def _feed(records: list[Record]) -> AsyncIterator[Record]:
    for rec in records:
        yield rec


async def test_sender_cuts_a_hung_post_short_once_its_outcome_is_known() -> None:
    # the request timeout is 10 minutes: only the cut (1 s after the ack) ends these POSTs
    gws, sender, records = _hanging_sender(3)
    started = time.monotonic()
    await asyncio.wait_for(sender.run(_feed(records)), 10.0)
    assert 0.9 < time.monotonic() - started < 5.0
    assert [r.status for r in records] == [Status.CANCELLED] * 3
    assert sorted(gws.posts) == ["ref-1", "ref-2", "ref-3"]  # settled: never sent again
    assert sender.retries == 0 and sender.in_flight == 0


async def test_a_cancelled_run_is_not_swallowed_by_a_cut() -> None:
    _, sender, records = _hanging_sender(2)
    run = asyncio.create_task(sender.run(_feed(records)))
    await asyncio.sleep(0.95)  # the cut is due at 1 s: the run is cancelled around it
    run.cancel()
    await asyncio.sleep(0.1)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 5.0)


# -- Recorder --------------------------------------------------------------------------------
def _journal_with_rows(path: Path, rows: int) -> Journal:
    journal = Journal.open(path)
    blank = dict.fromkeys(RECORD_COLUMNS)
    journal.add_records(
        tuple({**blank, "row": r, "phone_sent": f"21255501{r:02d}", "application_id": 134,
               "reference_id": f"ref-{r}", "status": "planned", "attempts": 0}.values())
        for r in range(1, rows + 1)
    )  # fmt: skip
    return journal


def _committed(path: Path) -> tuple[dict[int, str], list[tuple[int, str]]]:
    db = sqlite3.connect(path)
    try:
        statuses = dict(db.execute("SELECT row, status FROM records"))
        events = list(db.execute("SELECT row, event FROM events ORDER BY id"))
        return statuses, events
    finally:
        db.close()


def _sent(recorder: Recorder, rec: Record, status: Status = Status.SENT) -> None:
    rec.status = status
    rec.attempts = 1
    recorder.event(rec, status)


async def test_recorder_a_failed_commit_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    _journal_with_rows(path, 3).close()
    writer = JournalWriter(lambda: Journal.open(path, busy_timeout=0.05), str(path))
    recorder = Recorder(writer, clock=time.time, monotonic=time.monotonic)
    r1, r2, r3 = record(1), record(2), record(3)
    _sent(recorder, r1)
    _sent(recorder, r2)
    blocker = sqlite3.connect(path)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the journal: the commit fails
    try:
        with pytest.raises(sqlite3.OperationalError):
            await recorder.flush()
        assert recorder.buffered == 2
        _sent(recorder, r1, Status.CANCELLED)  # a newer state of a record in the failed batch
        _sent(recorder, r3)
    finally:
        blocker.rollback()
        blocker.close()
    await recorder.flush()
    await writer.close()
    statuses, events = _committed(path)
    assert statuses == {1: "cancelled", 2: "sent", 3: "sent"}
    assert events == [(1, "sent"), (2, "sent"), (1, "cancelled"), (3, "sent")]
    assert recorder.buffered == 0 and recorder.failed_commits == 1


async def test_recorder_cancelled_mid_commit_neither_loses_nor_repeats_the_batch(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    _journal_with_rows(path, 2).close()
    writer = JournalWriter(lambda: Journal.open(path, busy_timeout=5.0), str(path))
    recorder = Recorder(writer, clock=time.time, monotonic=time.monotonic)
    _sent(recorder, record(1))
    blocker = sqlite3.connect(path)
    blocker.execute("BEGIN IMMEDIATE")  # the commit waits on this lock
    flushing = asyncio.create_task(recorder.flush())
    await asyncio.sleep(0.2)
    flushing.cancel()  # the run is cancelled while the commit waits
    await asyncio.sleep(0.1)
    blocker.rollback()  # the commit goes through after all
    blocker.close()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    assert recorder.buffered == 0  # committed: not put back to be written twice
    await recorder.flush()
    await writer.close()
    assert _committed(path) == ({1: "sent", 2: "planned"}, [(1, "sent")])


async def test_recorder_unwritable_past_the_stall_limit_stops_naming_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    _journal_with_rows(path, 2).close()
    writer = JournalWriter(lambda: Journal.open(path, busy_timeout=0.02), str(path))
    t = FakeTime()
    recorder = Recorder(writer, clock=time.time, monotonic=t.clock, sleep=t.sleep, stall_limit=10.0)
    _sent(recorder, record(1))
    blocker = sqlite3.connect(path)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        # the writer retries on the fake clock; its commits really fail (busy) each time
        task = asyncio.create_task(recorder.run())
        deadline = time.monotonic() + 10
        while not task.done():
            if time.monotonic() > deadline:
                task.cancel()
                pytest.fail("the writer never gave up on an unwritable journal")
            await asyncio.sleep(0.01)
            t.advance(0.5)
        with pytest.raises(JournalUnwritable) as caught:
            task.result()
    finally:
        blocker.rollback()
        blocker.close()
    assert str(path) in str(caught.value) and caught.value.location == str(path)
    assert t.now - 1000.0 >= 10.0  # not before the stall limit
    assert recorder.buffered == 1  # still held, and drained once the journal is writable
    assert await recorder.drain()
    await writer.close()
    assert _committed(path)[0] == {1: "sent", 2: "planned"}


def _companion(rec: Record, handle: object) -> dict[str, Any]:
    """The ack's /me/internal companion: OCS's user event naming the record by number."""
    user_data = {"GSW_PHONE": rec.phone_sent, "GSW_CAMPAIGN_NAME": rec.campaign,
                 "GSW_CALLING_LIST": rec.calling_list, "GSW_RECORD_HANDLE": handle}  # fmt: skip
    return {"channel": "/me/internal", "data": {"messageType": "EventUserEvent", "userData": user_data}}


async def test_recorder_journals_a_cancelled_record_as_its_attempt_and_its_outcome(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    _journal_with_rows(path, 2).close()
    writer = JournalWriter(lambda: Journal.open(path), str(path))
    recorder = Recorder(writer, clock=time.time, monotonic=time.monotonic)
    t = FakeTime()
    matcher = Outcomes(operation="CancelRecord", ack_timeout=TIMEOUT, recorder=recorder, clock=t.clock,
                       wall=time.time, resend=lambda rec: None)  # fmt: skip
    r1, r2 = record(1), record(2)
    for rec in (r1, r2):
        matcher.posting(rec)
        rec.http_status, rec.status_code = 200, 0  # GWS's answer, as the sender sets it
        matcher.accepted(rec)
    await recorder.flush()  # in flight: the attempt, and the answer in the row's state
    matcher.on_messages([message(r1.reference_id), _companion(r1, 4711)])  # one poll
    matcher.on_messages([message(r2.reference_id), _companion(r2, "OCS-9")])  # no whole number
    await recorder.flush()
    await writer.close()
    statuses, events = _committed(path)
    assert statuses == {1: "cancelled", 2: "cancelled"}
    # no "accepted" event (the outcome implies it), the handle in the row, not an event,
    # unless no column can hold it: then the event log keeps OCS's text
    assert events == [(1, "sent"), (2, "sent"), (1, "cancelled"), (2, "cancelled"), (2, "record_handle")]
    db = sqlite3.connect(path)
    try:
        rows = dict(db.execute("SELECT row, record_handle FROM records"))
        answer = list(db.execute("SELECT row, http_status, status_code FROM events WHERE event='cancelled'"))
        detail = db.execute("SELECT detail FROM events WHERE event='record_handle'").fetchone()[0]
    finally:
        db.close()
    assert rows == {1: 4711, 2: None} and detail == "OCS-9"
    assert answer == [(1, 200, 0), (2, 200, 0)]  # the acceptance's answer, kept on the outcome
    assert recorder.commits == 2 and dict(recorder.outcomes) == {Status.CANCELLED: 2}


# -- AckChannel --------------------------------------------------------------------------------
async def _poll(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_ack_channel_resubscribes_after_402_and_receives_again() -> None:
    config = SimulatorConfig(users={USER: PASSWORD}, long_poll_timeout=1.0)
    async with GwsSimulator(config) as sim:
        gws = GwsConfig(base_url=sim.base_url, credentials=Credentials(USER, PASSWORD))
        session = GwsSession(gws, max_connections=4)
        received: list[dict[str, Any]] = []
        states: list[tuple[bool, str]] = []
        channel = AckChannel(gws.notifications_url, channels=gws.ack_channels,
                             headers=session.auth_headers, on_messages=received.extend,
                             on_state=lambda up, why: states.append((up, why)))  # fmt: skip
        try:
            await session.login()
            device = (await session.devices())[0]["id"]
            await channel.start(timeout=5)
            assert channel.handshakes == 1
            assert sim.drop_all_clients() == 1  # the server forgets us: 402::unknown_client
            await _poll(lambda: channel.handshakes >= 2 and channel.up.is_set(), 10,
                        f"no re-subscription: {states}")  # fmt: skip
            assert any(not up and "402" in why for up, why in states), states
            rec = record(7)
            rec.device_path = f"/devices/{device}"
            await session.post_record(rec.body("CancelRecord"))
            await _poll(lambda: any(m.get("data", {}).get("referenceId") == rec.reference_id
                                    for m in received), 5, "no ack after re-subscribing")  # fmt: skip
        finally:
            await channel.close()
            await session.aclose()
