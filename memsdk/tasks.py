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
from collections.abc import Iterable
from typing import Any

__all__ = ["stop_tasks"]

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
