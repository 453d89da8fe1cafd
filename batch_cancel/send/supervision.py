"""Task lifetimes: a background task's failure named, and an ExceptionGroup reduced to one error.

The send phase and the sender run their tasks in :class:`asyncio.TaskGroup`s, so
a task that fails cancels its siblings at once. What the CLI maps to an exit
code is one error, though: the first :class:`AbortedError` (exit 3) of the
group, or else its first other error. A cancellation is never turned into an
error here, nor swallowed.
"""

from __future__ import annotations

from collections.abc import Awaitable

from batch_cancel.exceptions import AbortedError, BackgroundTaskFailed, BatchCancelError

__all__ = ["background", "one_error"]


async def background(name: str, work: Awaitable[None]) -> None:
    """Run ``work``; an unexpected failure becomes :class:`BackgroundTaskFailed` naming it."""
    try:
        await work
    except BatchCancelError:
        raise  # already says what went wrong (e.g. JournalUnwritable names the journal)
    except Exception as exc:
        raise BackgroundTaskFailed(name, exc) from exc


def one_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that stands for the group: aborts first, then our errors, then the rest."""
    leaves = list(_leaves(group))
    for kind in (AbortedError, BatchCancelError, Exception):
        for error in leaves:
            if isinstance(error, kind):
                return error
    return leaves[0]


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]
