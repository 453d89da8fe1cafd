"""The lean script, listening to ``/me/internal`` too, plus a SQLite journal: the informative row.

    python -m benchmarks.lean_journal NUMBERS.csv --journal STATE.sqlite [lean_baseline's options]

What a careful user would add to the lean script (benchmarks/lean_baseline.py, run
unchanged) before trusting it with a compliance list: a row per record written
before its POST, its answer and its acknowledgement written as they come, one
commit per long poll (WAL, ``synchronous=NORMAL``: what a script would choose; a
commit per record would cap it at the disk's fsync rate). No resume, no report, no
doubt: it shows what the journal alone costs a script, next to batch-cancel, which
journals every attempt and outcome on a thread of its own.
"""

from __future__ import annotations

import argparse
import sqlite3
import time
from typing import Any

from benchmarks import lean_baseline

__all__ = ["main"]

RECORDS = "/api/v2/me/outbound-records"


class Journal:
    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS records (reference_id TEXT PRIMARY KEY, number TEXT, "
                        "status TEXT, answered_at REAL, outcome TEXT, acked_at REAL)")  # fmt: skip
        self.db.commit()

    def sent(self, ref: str, number: str) -> None:
        self.db.execute("INSERT INTO records (reference_id, number, status) VALUES (?, ?, 'sent')",
                        (ref, number))  # fmt: skip

    def answered(self, ref: str, status: int) -> None:
        self.db.execute("UPDATE records SET status = ?, answered_at = ? WHERE reference_id = ?",
                        ("accepted" if status == 200 else f"http {status}", time.time(), ref))  # fmt: skip

    def heard(self, messages: list[dict[str, Any]]) -> None:
        now = time.time()
        outcomes = [(data.get("notificationType"), now, data["referenceId"]) for message in messages
                    if isinstance(data := message.get("data"), dict) and data.get("referenceId")]  # fmt: skip
        self.db.executemany("UPDATE records SET outcome = ?, acked_at = ? WHERE reference_id = ?", outcomes)
        self.db.commit()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--journal", required=True)
    ours, rest = parser.parse_known_args(argv)
    journal = Journal(ours.journal)
    open_http, poll = lean_baseline._open_http, lean_baseline.Bayeux.poll

    Http = tuple[lean_baseline.Fetch, lean_baseline.Close]

    async def journaled_http(kind: str, base_url: str, connections: int) -> Http:
        fetch, close = await open_http(kind, base_url, connections)

        async def journaled(method: str, path: str, headers: dict[str, str],
                            body: Any) -> tuple[int, dict[str, str], Any]:  # fmt: skip
            if path != RECORDS:
                return await fetch(method, path, headers, body)
            journal.sent(body["referenceId"], body["phoneNumber"])
            answer = await fetch(method, path, headers, body)
            journal.answered(body["referenceId"], answer[0])
            return answer

        return journaled, close

    async def journaled_poll(self: lean_baseline.Bayeux) -> list[dict[str, Any]]:
        messages = await poll(self)
        journal.heard(messages)
        return messages

    lean_baseline._open_http = journaled_http
    lean_baseline.Bayeux.poll = journaled_poll  # type: ignore[method-assign]
    try:
        lean_baseline.main(["--internal", *rest])
    finally:
        journal.db.commit()
        journal.db.close()



if __name__ == "__main__":
    main()
