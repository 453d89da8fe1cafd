from __future__ import annotations

import logging

import pytest

from batch_cancel.log_once import OncePerInterval


def test_first_event_logged_then_once_per_interval_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    events = OncePerInterval(logging.getLogger("t"), interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="t"):
        for t in (0.0, 1.0, 2.0, 3.0, 11.0, 12.0):
            now[0] = t
            events.info("reset", "retrying: %s", "reset")
        events.info("other", "another kind")
    assert [r.getMessage() for r in caplog.records] == [
        "retrying: reset",
        "retrying: reset (4 since the last such line)",
        "another kind",
    ]
