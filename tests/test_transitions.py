"""The row's transition table (send/outcomes.py), one test per line, on a fake clock.

Each test drives :class:`Outcomes` the way the sender and CometD do and checks the row's
status, its doubt and what the journal would get; ``took`` checks that the change went
through that very line of the table. The last test checks that every line has its test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_time import FakeTime

from batch_cancel.journal.rows import Status
from batch_cancel.journal.writer import Recorder
from batch_cancel.send import outcomes as outcomes_module
from batch_cancel.send.outcomes import _TABLE, TRANSITIONS, Event, Outcomes, Record, Rule, earlier_references

ACK = "RecordCancelAcknowledge"
TIMEOUT = 30.0
P, S, C, F, T = Status.PLANNED, Status.SENT, Status.CANCELLED, Status.FAILED, Status.TIMED_OUT


def message(ref: str, notification: str = ACK, **extra: Any) -> dict[str, Any]:
    data = {"referenceId": ref, "notificationType": notification, **extra}
    return {"channel": "/v2/me/outbound", "data": data}


def failure(ref: str) -> dict[str, Any]:
    return message(ref, "RecordCancelError", errorCode=6, errorMessage="Record not found")


class Capturing(Recorder):
    """The recorder without a journal, keeping every event it is told (the journal's event log)."""

    def __init__(self, t: FakeTime) -> None:
        super().__init__(None, clock=t.clock, monotonic=t.clock)
        self.told: list[tuple[str, str | None]] = []

    def event(self, rec: Record, event: str, detail: str | None = None) -> None:
        self.told.append((event, detail))
        super().event(rec, event, detail)


class Bench:
    def __init__(self, ref: str = "bc-run-1") -> None:
        self.t = FakeTime()
        self.recorder = Capturing(self.t)
        self.resent: list[Record] = []
        self.outcomes = Outcomes(operation="CancelRecord", ack_timeout=TIMEOUT, recorder=self.recorder,
                                 clock=self.t.clock, wall=self.t.clock, resend=self.resent.append,
                                 max_attempts=5, ref_prefix="bc-run-")  # fmt: skip
        self.rec = Record(row=1, reference_id=ref, phone_sent="2125550101", application_id=134,
                          campaign="Campaign1", calling_list="CallingList1", device_path="/devices/d1",
                          chain_attribute=None)  # fmt: skip
        self.taken: list[tuple[Status, Event, bool]] = []

    def later(self, seconds: float) -> None:
        self.t.now += seconds
        self.outcomes.expire()

    def sent_and_accepted(self) -> None:
        self.outcomes.posting(self.rec)
        self.outcomes.accepted(self.rec)

    def journaled(self) -> Status:
        return next(s.status for s in self.recorder.pending_states() if s.row == self.rec.row)

    def details(self) -> list[str]:
        return [detail or "" for _, detail in self.recorder.told]


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Iterator[Bench]:
    b = Bench()
    real = outcomes_module.apply

    def watched(rec: Record, event: Event) -> Rule | None:
        key = (rec.status, event, rec.doubt)
        rule = real(rec, event)
        if rule is not None:
            b.taken.append(key)
        return rule

    monkeypatch.setattr(outcomes_module, "apply", watched)
    yield b


def took(b: Bench, start: Status, event: Event, doubt: bool) -> None:
    assert (start, event, doubt) in b.taken, b.taken


COVERED: dict[tuple[Status, Event], set[bool]] = {}


def covers(start: Status, event: Event, *doubts: bool) -> Any:
    COVERED.setdefault((start, event), set()).update(doubts)
    return lambda fn: fn


# -- the lines ---------------------------------------------------------------------------
@covers(P, Event.POST, False)
def test_planned_post_is_sent(bench: Bench) -> None:
    bench.outcomes.posting(bench.rec)
    took(bench, P, Event.POST, False)
    assert bench.rec.status is S and bench.rec.attempts == 1 and bench.journaled() is S
    assert bench.outcomes.awaiting() == 1


@covers(S, Event.POST, False, True)
def test_sent_post_again_keeps_the_reference_id(bench: Bench) -> None:
    bench.outcomes.posting(bench.rec)
    bench.outcomes.retrying(bench.rec, True, "no answer")
    bench.outcomes.posting(bench.rec)
    took(bench, S, Event.POST, True)
    assert bench.rec.attempts == 2 and bench.rec.reference_id == "bc-run-1"
    assert bench.outcomes.awaiting() == 1  # one row, however often it is sent


@covers(S, Event.ACCEPTED, False)
def test_accepted_starts_the_deadline(bench: Bench) -> None:
    bench.sent_and_accepted()
    took(bench, S, Event.ACCEPTED, False)
    assert bench.rec.status is S and bench.rec.deadline == bench.t.now + TIMEOUT


@covers(S, Event.NOT_PROCESSED, False)
def test_not_processed_keeps_the_row_certain(bench: Bench) -> None:
    bench.outcomes.posting(bench.rec)
    bench.outcomes.retrying(bench.rec, False, "connection refused")
    took(bench, S, Event.NOT_PROCESSED, False)
    assert bench.rec.status is S and not bench.rec.doubt


@covers(S, Event.MAYBE_PROCESSED, False)
def test_maybe_processed_puts_the_row_in_doubt(bench: Bench) -> None:
    bench.outcomes.posting(bench.rec)
    bench.outcomes.retrying(bench.rec, True, "502 Bad Gateway")
    took(bench, S, Event.MAYBE_PROCESSED, False)
    assert bench.rec.status is S and bench.rec.doubt
    assert any("may have been processed" in d for d in bench.details())


@covers(S, Event.REFUSED, False)
def test_refused_without_doubt_fails(bench: Bench) -> None:
    bench.outcomes.posting(bench.rec)
    bench.outcomes.refused(bench.rec, "HTTP 400 statusCode 10: Invalid parameter", "statusCode 10")
    took(bench, S, Event.REFUSED, False)
    assert bench.rec.status is F and bench.journaled() is F and bench.rec.error_code == "statusCode 10"


@covers(S, Event.REFUSED, True)
def test_refused_in_doubt_is_unconfirmed_not_failed(bench: Bench) -> None:
    bench.outcomes.posting(bench.rec)
    bench.outcomes.retrying(bench.rec, True, "no HTTP answer")
    bench.outcomes.refused(bench.rec, "HTTP 404 statusCode 6: Record not found", "statusCode 6")
    took(bench, S, Event.REFUSED, True)
    assert bench.rec.status is T and bench.journaled() is T
    assert bench.rec.error is not None and "Record not found" in bench.rec.error
    assert "may already be cancelled" in bench.rec.error
    assert bench.outcomes.unconfirmed == 1


@covers(S, Event.GAVE_UP, False)
def test_gave_up_when_every_attempt_is_known_not_done_fails(bench: Bench) -> None:
    bench.outcomes.posting(bench.rec)
    bench.outcomes.retrying(bench.rec, False, "503 statusCode 4")
    bench.outcomes.refused(bench.rec, "gave up after 5 attempts: 503", "statusCode 4", gave_up=True)
    took(bench, S, Event.GAVE_UP, False)
    assert bench.rec.status is F


@covers(S, Event.GAVE_UP, True)
def test_gave_up_after_an_unanswered_attempt_is_unconfirmed(bench: Bench) -> None:
    bench.outcomes.posting(bench.rec)
    bench.outcomes.retrying(bench.rec, True, "no HTTP answer within 15 s")
    for _ in range(4):
        bench.outcomes.posting(bench.rec)
        bench.outcomes.retrying(bench.rec, False, "503 statusCode 4")
    bench.outcomes.refused(bench.rec, "gave up after 5 attempts: 503", "statusCode 4", gave_up=True)
    took(bench, S, Event.GAVE_UP, True)
    assert bench.rec.status is T and "may already be cancelled" in (bench.rec.error or "")


@covers(S, Event.FAILURE, False)
def test_a_failure_notification_without_doubt_fails(bench: Bench) -> None:
    bench.sent_and_accepted()
    bench.outcomes.on_messages([failure("bc-run-1")])
    took(bench, S, Event.FAILURE, False)
    assert bench.rec.status is F and bench.rec.error_code == "errorCode 6"


@covers(S, Event.FAILURE, True)
def test_a_failure_notification_in_doubt_is_unconfirmed(bench: Bench) -> None:
    # the first POST went unanswered (GWS may have cancelled it), the resend is refused:
    # "Record not found" is what GWS says to a repeat for a record it cancelled
    bench.outcomes.posting(bench.rec)
    bench.outcomes.retrying(bench.rec, True, "no HTTP answer")
    bench.sent_and_accepted()
    bench.outcomes.on_messages([failure("bc-run-1")])
    took(bench, S, Event.FAILURE, True)
    assert bench.rec.status is T and "may already be cancelled" in (bench.rec.error or "")


@covers(S, Event.ACK, False, True)
def test_an_ack_cancels(bench: Bench) -> None:
    bench.outcomes.posting(bench.rec)
    bench.outcomes.retrying(bench.rec, True, "reset after the request was written")
    bench.sent_and_accepted()
    bench.outcomes.on_messages([message("bc-run-1")])
    took(bench, S, Event.ACK, True)
    assert bench.rec.status is C and bench.journaled() is C and bench.outcomes.awaiting() == 0
    assert dict(bench.recorder.outcomes) == {C: 1}


def test_an_ack_before_the_http_answer_cancels(bench: Bench) -> None:
    bench.outcomes.posting(bench.rec)
    bench.outcomes.on_messages([message("bc-run-1")])
    took(bench, S, Event.ACK, False)
    bench.outcomes.accepted(bench.rec)  # the answer, late: no deadline starts
    assert bench.rec.status is C and bench.rec.deadline is None


@covers(S, Event.GAP, False)
def test_no_outcome_after_a_gap_is_asked_again(bench: Bench) -> None:
    bench.outcomes.posting(bench.rec)
    bench.outcomes.channel_changed(False)
    bench.outcomes.accepted(bench.rec)
    bench.outcomes.channel_changed(True)
    bench.later(TIMEOUT + 0.1)
    took(bench, S, Event.GAP, False)
    assert bench.resent == [bench.rec] and bench.rec.status is S and bench.rec.doubt


def test_a_deadline_while_no_poll_completed_waits_for_the_channel_then_asks_again(bench: Bench) -> None:
    # a half-open long poll: GWS accepted the row, then no poll completed (its ack may sit in
    # the hung poll); the deadline holds the row until the channel is heard from again
    last_poll = [bench.t.now - 1.0]
    bench.outcomes.heard_since = lambda t: last_poll[0] > t
    bench.sent_and_accepted()
    bench.later(TIMEOUT + 5)
    assert bench.rec.status is S and bench.resent == []  # held, not timed out
    bench.outcomes.channel_changed(False)  # the poll's bound cut it: the channel is down
    bench.outcomes.channel_changed(True)
    last_poll[0] = bench.t.now + 0.5  # a poll completes on the new session
    bench.later(1.0)
    took(bench, S, Event.GAP, False)
    assert bench.resent == [bench.rec] and bench.rec.status is S  # same referenceId, asked again


def test_a_deadline_held_for_a_quiet_poll_times_out_once_one_completes(bench: Bench) -> None:
    # a healthy channel whose poll is simply held (no messages): when it completes and
    # no outcome came, the row times out as usual
    last_poll = [bench.t.now - 1.0]
    bench.outcomes.heard_since = lambda t: last_poll[0] > t
    bench.sent_and_accepted()
    bench.later(TIMEOUT + 1)
    assert bench.rec.status is S
    last_poll[0] = bench.t.now
    bench.later(0.1)
    assert bench.rec.status is T and bench.resent == []


@covers(S, Event.DEADLINE, False)
def test_no_outcome_in_time_times_out(bench: Bench) -> None:
    bench.sent_and_accepted()
    bench.later(TIMEOUT - 0.01)
    assert bench.rec.status is S
    bench.later(0.02)
    took(bench, S, Event.DEADLINE, False)
    assert bench.rec.status is T and bench.rec.doubt and bench.rec.error_code == "timeout"


@covers(T, Event.ACK, True)
def test_a_late_ack_upgrades_a_timed_out_row(bench: Bench) -> None:
    bench.sent_and_accepted()
    bench.later(TIMEOUT + 1)
    bench.outcomes.on_messages([message("bc-run-1")])
    took(bench, T, Event.ACK, True)
    assert bench.rec.status is C and bench.journaled() is C
    assert bench.recorder.outcomes[C] == 1 and bench.recorder.outcomes[T] == 0
    assert bench.outcomes.late_acks == 1 and any("late acknowledgement" in d for d in bench.details())


@covers(F, Event.ACK, False)
def test_a_late_ack_upgrades_a_failed_row_and_is_kept_as_evidence(bench: Bench) -> None:
    bench.sent_and_accepted()
    bench.outcomes.on_messages([failure("bc-run-1")])
    assert bench.rec.status is F
    bench.outcomes.on_messages([message("bc-run-1")])
    took(bench, F, Event.ACK, False)
    assert bench.rec.status is C and bench.journaled() is C and bench.rec.error is None
    assert bench.recorder.outcomes[C] == 1 and bench.recorder.outcomes[F] == 0
    assert any("late acknowledgement bc-run-1 (was failed)" in d for d in bench.details())


def test_an_earlier_rounds_ack_cancels_and_is_kept_as_evidence(monkeypatch: pytest.MonkeyPatch) -> None:
    b = Bench(ref="bc-run-1-r2")  # --retry-failed twice: R, R-r1, then R-r2 now
    assert earlier_references("bc-run-1-r2") == ["bc-run-1", "bc-run-1-r1"]
    b.sent_and_accepted()
    b.outcomes.on_messages([message("bc-run-1")])  # the first round's ack, late
    assert b.rec.status is C and b.journaled() is C and b.outcomes.awaiting() == 0
    assert any("earlier round's referenceId bc-run-1" in d for d in b.details())
    b.outcomes.on_messages([message("bc-run-1-r2")])  # this round's: a repeat now
    assert b.outcomes.duplicate_acks == 1 and b.recorder.outcomes[C] == 1


def test_an_earlier_rounds_ack_upgrades_a_row_failed_this_round() -> None:
    b = Bench(ref="bc-run-1-r1")
    b.sent_and_accepted()
    b.outcomes.on_messages([failure("bc-run-1-r1")])
    assert b.rec.status is F
    b.outcomes.on_messages([message("bc-run-1")])
    assert b.rec.status is C and any("earlier round's referenceId bc-run-1 (was failed)" in d
                                     for d in b.details())  # fmt: skip


def test_a_repeated_ack_is_counted_once(bench: Bench) -> None:
    bench.sent_and_accepted()
    bench.outcomes.on_messages([message("bc-run-1")])
    bench.outcomes.on_messages([message("bc-run-1")])
    assert bench.rec.status is C and bench.recorder.outcomes[C] == 1
    assert bench.outcomes.duplicate_acks == 1


@covers(T, Event.FAILURE, True)
def test_a_late_failure_of_a_timed_out_row_is_evidence_only(bench: Bench) -> None:
    bench.sent_and_accepted()
    bench.later(TIMEOUT + 1)
    bench.outcomes.on_messages([failure("bc-run-1")])
    took(bench, T, Event.FAILURE, True)
    assert bench.rec.status is T
    assert any(d.startswith("bc-run-1: ") for d in bench.details())  # kept as an event


@covers(F, Event.FAILURE, False)
def test_a_repeated_failure_changes_nothing(bench: Bench) -> None:
    bench.sent_and_accepted()
    bench.outcomes.on_messages([failure("bc-run-1")])
    bench.outcomes.on_messages([failure("bc-run-1")])
    took(bench, F, Event.FAILURE, False)
    assert bench.rec.status is F and bench.recorder.outcomes[F] == 1


def test_an_ack_beats_a_refused_repeat(bench: Bench) -> None:
    bench.sent_and_accepted()
    bench.outcomes.on_messages([message("bc-run-1"), failure("bc-run-1")])
    assert bench.rec.status is C and bench.recorder.outcomes == {C: 1}


def test_a_row_resumed_in_flight_or_timed_out_is_in_doubt() -> None:
    from batch_cancel.journal.rows import RowToSend

    def loaded(status: str) -> Record:
        row = RowToSend(1, "bc-run-1", "2125550101", 134, "Campaign1", "CallingList1", "/devices/d1",
                        None, status, 1, None, None, None, None)  # fmt: skip
        return Record.from_journal(row, None)

    assert not loaded("planned").doubt
    assert loaded("sent").doubt and loaded("timed_out").doubt
    assert loaded("timed_out").status is S  # --retry-timed-out: in play again


def test_every_line_of_the_table_has_its_test() -> None:
    lines = {(start, event): set() for start, event, _ in TRANSITIONS}
    for start, event, doubt in TRANSITIONS:
        lines[(start, event)].add(doubt)
    assert set(COVERED) == set(lines)
    # where a line's target depends on doubt, both sides are tested
    for key, doubts in lines.items():
        targets = {TRANSITIONS[(key[0], key[1], d)].to for d in doubts}
        if len(targets) > 1:
            assert COVERED[key] == {False, True}, key


def test_the_readme_shows_the_same_table() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    marker = "<!-- transitions: generated from send/outcomes.py -->"
    shown = readme.split(marker)[1].split("<!-- /transitions -->")[0]
    lines = shown.strip().splitlines()[2:]
    expected = []
    for start, event, doubt, rule in _TABLE:
        d = "any" if doubt is None else ("yes" if doubt else "no")
        after = "unchanged" if rule.doubt is None else ("yes" if rule.doubt else "no")
        expected.append(f"| `{start}` | {event.value} | {d} | `{rule.to}` | {after} | {rule.why} |")
    assert lines == expected
