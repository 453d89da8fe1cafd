"""Stopping a task of our own while closing, without swallowing the caller's cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Future[Any], on_error: Callable[[Exception], None]) -> None:
    """Cancel ``task`` and wait for it to end. Its own cancellation is expected, and a
    failure while it stops goes to ``on_error`` (the owner is closing: it no longer
    matters); a cancellation of the caller itself is raised, never swallowed."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception as exc:
        on_error(exc)
