"""The event loop a command runs on: uvloop where it is installed, asyncio's own otherwise.

Chosen by measurement (issue 23, ``python -m benchmarks``): the send path is
one event loop driving 64 requests in flight and a long poll, so the loop's own
work (selecting, scheduling callbacks, socket transports) is a large share of the
client's CPU; uvloop does that work in C (libuv).
``BATCH_CANCEL_EVENT_LOOP=asyncio`` picks the standard library's loop instead, to
rule the loop out when a problem is being chased; uvloop does not exist on
Windows, where the standard loop is used.

The library (:func:`batch_cancel.run_job`) does not choose: it runs on whatever
loop its caller runs it on. Only the command line calls :func:`run`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

from batch_cancel.exceptions import ConfigError

__all__ = ["CHOICES", "ENV", "run"]

ENV = "BATCH_CANCEL_EVENT_LOOP"
CHOICES = ("uvloop", "asyncio")

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop :data:`ENV` names (default: uvloop if importable)."""
    choice = os.environ.get(ENV, "").strip().lower() or "uvloop"
    if choice not in CHOICES:
        main.close()  # never awaited: say so to nobody, nothing was started
        raise ConfigError(f"{ENV}={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "uvloop":
        try:
            import uvloop
        except ImportError:  # Windows, or a platform without a wheel
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)
