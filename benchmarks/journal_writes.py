"""What the journal writer's thread spends per record while records are sent.

    python -m benchmarks.journal_writes [--records 10000] [--repeat 9]

The send phase commits every 50 ms: the latest state of each record touched
(``UPDATE records``, fenced by the run lock's token) and its events (``INSERT INTO
events``; two per cancelled record: sent, cancelled). This replays that load on a
fresh journal of ``--records`` planned rows, under the run lock, in batches of the
size one commit holds at about 2,300 records/s, and reads the thread's CPU time
(``time.thread_time``) around the commits alone. Measured these ways, in turn
within each repeat, medians shown:

* ``journal``: :meth:`Journal.save_states` as the send phase calls it (two events
  per record; the state of a record in flight by a narrower UPDATE);
* ``with 4 events``: the same, with the events before issue 23 (sent, accepted,
  cancelled, record_handle);
* ``before``: four events, and every state written whole (before issue 23);
* ``one row per statement``: that, one event per statement;
* ``+ statuses unadapted``: as well, statuses bound without the adapter
  ``journal/store.py`` registers (how it was before that).
"""

from __future__ import annotations

import argparse
import itertools
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from batch_cancel.journal.lock import JournalLock
from batch_cancel.journal.rows import RowEvent, RowState, Status
from batch_cancel.journal.store import (
    _ADD_EVENT,
    _ADD_EVENTS,
    _ROWS_PER_INSERT,
    _SAVE_STATE_FENCED,
    RECORD_COLUMNS,
    Journal,
)

__all__ = ["main"]

_PER_COMMIT = 115  # records a 50 ms commit holds at ~2,300 acks/s
Batch = tuple[list[RowState], list[RowEvent]]


def _journal(path: Path, n: int, fence: str) -> Journal:
    journal = Journal.open(path, fence=fence)
    blank = dict.fromkeys(RECORD_COLUMNS)
    journal.add_records(
        tuple({**blank, "row": r, "source": "in.csv", "phone_number": f"212{2000000 + r:07d}",
               "phone_sent": f"212{2000000 + r:07d}", "application_id": 134, "campaign": "Campaign1",
               "calling_list": "CallingList1", "reference_id": f"bc-bench-{r:07d}",
               "status": "planned", "attempts": 0}.values())
        for r in range(1, n + 1)
    )  # fmt: skip
    return journal


def _batches(n: int, before: bool) -> list[Batch]:
    """Each record sent in one commit and settled in the next (its states: sent, then cancelled)."""
    now = time.time()
    out: list[Batch] = []
    rows = list(range(1, n + 1))
    chunks = [rows[i:i + _PER_COMMIT] for i in range(0, n, _PER_COMMIT)]
    for i in range(len(chunks) + 1):
        states: list[RowState] = []
        events: list[RowEvent] = []
        for r in chunks[i - 1] if i else []:  # the previous commit's records settle
            states.append(RowState(Status.CANCELLED, 1, 200, 0, "RecordCancelAcknowledge", None, now,
                                   now, 21.5, 1000 + r, r))  # fmt: skip
            if before:
                events.append(RowEvent(r, now, "accepted", 1, 200, 0, None))
            events.append(RowEvent(r, now, Status.CANCELLED, 1, 200, 0, None))
            if before:
                events.append(RowEvent(r, now, "record_handle", 1, 200, 0, str(1000 + r)))
        for r in chunks[i] if i < len(chunks) else []:
            states.append(RowState(Status.SENT, 1, None, None, None, None, now, None, None, None, r))
            events.append(RowEvent(r, now, Status.SENT, 1, None, None, None))
        out.append((states, events))
    return out


def _save_journal(journal: Journal, states: list[RowState], events: list[RowEvent]) -> None:
    journal.save_states(states, events)


def _save_before(journal: Journal, states: list[RowState], events: list[RowEvent]) -> None:
    """``save_states`` before issue 23: every state written whole."""
    with journal.transaction():
        db = journal._db  # its statements, replayed on the same connection
        db.executemany(_SAVE_STATE_FENCED, ((*s, journal.fence) for s in states))
        width = len(RowEvent._fields) * _ROWS_PER_INSERT
        full = len(events) - len(events) % _ROWS_PER_INSERT
        if full:
            flat = itertools.chain.from_iterable(events[:full])
            db.executemany(_ADD_EVENTS, zip(*[flat] * width, strict=True))
        if full < len(events):
            db.executemany(_ADD_EVENT, events[full:])


def _save_one_by_one(journal: Journal, states: list[RowState], events: list[RowEvent]) -> None:
    with journal.transaction():
        db = journal._db  # the old statements, replayed on the same connection
        db.executemany(_SAVE_STATE_FENCED, ((*s, journal.fence) for s in states))
        db.executemany(_ADD_EVENT, events)


def _measure(n: int, save: Callable[[Journal, list[RowState], list[RowEvent]], None],
             adapted: bool, before: bool) -> float:  # fmt: skip
    """Microseconds of this thread's CPU per record for all the commits of ``n`` records."""
    key = (Status, sqlite3.PrepareProtocol)
    adapter = sqlite3.adapters.get(key)
    with tempfile.TemporaryDirectory(prefix="bc-journal-bench-") as tmp:
        lock = JournalLock.acquire(Path(tmp) / "journal.sqlite")
        journal = _journal(Path(tmp) / "journal.sqlite", n, lock.holder.token)
        batches = _batches(n, before)
        if not adapted:
            sqlite3.adapters.pop(key, None)
        try:
            started = time.thread_time()
            for states, events in batches:
                save(journal, states, events)
            spent = time.thread_time() - started
        finally:
            if adapter is not None:
                sqlite3.adapters[key] = adapter
            journal.close()
            lock.release()
    return spent / n * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.journal_writes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args(argv)
    ways = {
        "journal (Journal.save_states)": (_save_journal, True, False),
        "  with 4 events": (_save_journal, True, True),
        "before: 4 events, states whole": (_save_before, True, True),
        "  one row per statement": (_save_one_by_one, True, True),
        "  + statuses unadapted": (_save_one_by_one, False, True),
    }
    spent: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    for i in range(args.repeat):
        # each way goes first in turn: the first of a repeat runs on a colder machine
        for name in names[i % len(names):] + names[:i % len(names)]:
            save, adapted, before = ways[name]
            spent[name].append(_measure(args.records, save, adapted, before))
    base = statistics.median(spent["before: 4 events, states whole"])
    print(f"journal writer CPU per record ({args.records:,} records, commits of {_PER_COMMIT}; "
          f"medians of {args.repeat})")
    for name, values in spent.items():
        med = statistics.median(values)
        print(f"   {name:<34} {med:6.1f} us/record   {med / base:5.2f}x of before")


if __name__ == "__main__":
    main()
