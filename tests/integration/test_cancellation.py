"""Cancellation and deadlines against real services (guarantee 10, FAULTS.md row 18).

A cancel is delivered when `task.cancel()` returns True (the task had not finished yet):
from then on the task must end cancelled, whatever dependency it was waiting on. These
tests deliver cancels at every loop iteration of a call's life, so that one lands in each
gap a library could swallow it in (Python 3.11's asyncio.wait_for loses a cancel that
arrives in the iteration its inner awaitable completes in).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from memsdk.cache.redis import RedisMetaCache
from memsdk.store.base import MetaRecord
from tests.harness.redis_server import RedisServer

NOW = 1_900_000_000


def _meta(session_id: str, version: int) -> MetaRecord:
    return MetaRecord(
        session_id=session_id,
        customer_id="c",
        created_at_ms=NOW * 1000,
        updated_at_ms=NOW * 1000,
        turn_count=0,
        last_turn_id=None,
        floor_turn_id="0",
        page_context={},
        attributes={},
        expires_at=NOW + 3600,
        version=version,
    )


async def cancel_at_every_step(
    call: Callable[[int], Awaitable[Any]], *, steps: int, rounds: int = 1
) -> tuple[int, int]:
    """Start `call(i)` and cancel it after 0, 1, ... `steps` loop iterations, `rounds` times.

    Returns (cancels delivered, calls that swallowed a delivered cancel and returned).
    """
    delivered = swallowed = 0
    i = 0
    for _ in range(rounds):
        for step in range(steps):
            i += 1
            task = asyncio.ensure_future(call(i))
            for _ in range(step):
                await asyncio.sleep(0)
            if not task.cancel():
                await task
                continue
            delivered += 1
            try:
                await task
            except asyncio.CancelledError:
                continue
            swallowed += 1
    return delivered, swallowed


async def test_a_cancelled_redis_command_always_ends_cancelled(
    redis_server: RedisServer,
) -> None:
    # Generous timeouts: the cancel, not a deadline, must end every call here.
    cache = RedisMetaCache(redis_server.url, timeout=5.0, connect_timeout=5.0)
    await cache.open()
    try:
        assert await cache.put(_meta("warm", 1), now_s=NOW)

        async def call(i: int) -> Any:
            if i % 2:
                return await cache.get(f"s{i % 7}")
            return await cache.put(_meta(f"s{i % 7}", i), now_s=NOW)

        delivered, swallowed = await cancel_at_every_step(call, steps=12, rounds=60)
        assert delivered > 200
        assert swallowed == 0, f"{swallowed} of {delivered} cancels were swallowed"
    finally:
        await cache.aclose()


@pytest.mark.parametrize("kind", ["get", "put"])
async def test_a_redis_call_deadline_holds_while_the_server_hangs(
    redis_server: RedisServer, kind: str
) -> None:
    """The cache's own budget bounds a call on a server that accepts and never answers."""
    cache = RedisMetaCache(redis_server.url, timeout=0.2, connect_timeout=0.2)
    await cache.open()
    try:
        assert await cache.put(_meta("s", 1), now_s=NOW)
        redis_server.pause()  # SIGSTOP: connections stay open, nothing answers
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            if kind == "get":
                assert await cache.get("s") is None
            else:
                assert not await cache.put(_meta("s", 2), now_s=NOW)
            # The budget is 0.4 s; the slack is for a stalled machine, not for the code.
            assert loop.time() - started < 5.0
            assert cache.stats().errors == 1
        finally:
            redis_server.resume()
    finally:
        await cache.aclose()
