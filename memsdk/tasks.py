"""Stopping owned background tasks for sure.

Every background task in memsdk has an owner that stops it with `stop_tasks`. One cancel()
is not enough to stop a task: a library may swallow it (Python 3.11's asyncio.wait_for
returns the inner result when a cancel lands in the iteration the inner awaitable
completes in), and a task that is between two awaits only sees it at the next one. So the
owner cancels again until the task has ended; a task that keeps swallowing cancels costs a
few wake-ups, never a hang.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any

__all__ = ["outlast_cancellation", "stop_tasks", "wait_unless"]

# How long a cancelled task gets to finish its cleanup before it is cancelled again.
_GRACE_S = 0.05


async def stop_tasks(tasks: Iterable[asyncio.Future[Any]], *, grace_s: float = _GRACE_S) -> None:
    """Cancel `tasks` until every one has ended; their results and errors are discarded."""
    owned = list(tasks)
    pending = {task for task in owned if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=grace_s)
    for task in owned:
        if not task.cancelled():
            task.exception()  # retrieved: an owner that stops a task has no use for its error


async def outlast_cancellation(task: asyncio.Future[None]) -> None:
    """Wait for `task` (a close) to end even if this caller is cancelled once more meanwhile;
    the caller re-raises its own cancel afterwards. A second cancel while waiting here is
    given up on: the close goes on in its own task."""
    if not task.done():
        await asyncio.wait([task])
    if not task.cancelled():
        task.exception()  # retrieved: the close logs its own failures


async def wait_unless(stop: asyncio.Event, work: Coroutine[Any, Any, Any]) -> None:
    """Run `work` until it ends or `stop` is set, whichever comes first; then stop both."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        await stop_tasks([stopper])
        if task.done():
            task.result()  # its error, if any, is the caller's to handle
        else:
            await stop_tasks([task])
