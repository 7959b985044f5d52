"""L1 and the consistency modes, through the public API, on every store (no Redis here).

Two MemoryClients stand for two orchestrator processes: separate L1s, one shared store.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memsdk import Turn
from memsdk.config import Config
from memsdk.testing import CountingStore, FakeClock
from memsdk.wiring import build_store
from tests.conftest import ClientFactory


def user(text: str) -> Turn:
    return Turn(role="user", content=text)


async def counted(make_client: ClientFactory, settings_: dict[str, Any], **kw: Any) -> Any:
    counting = CountingStore(build_store(Config(**settings_)))
    return await make_client(store=counting, **kw), counting


async def test_own_write_is_served_from_l1_after_validation(
    make_client: ClientFactory, store_settings: dict[str, Any]
) -> None:
    mem, counting = await counted(make_client, store_settings)
    await mem.append_turns("s", [user("q1"), Turn(role="assistant", content="a1")])
    counting.reset()
    ctx = await mem.load_context("s")
    assert [t.content for t in ctx.turns] == ["q1", "a1"] and ctx.source == "l1+store"
    assert counting.calls == {"get_meta": 1}  # validation only: no Query
    assert mem.health().l1_hits == 1


async def test_validated_reader_sees_other_writers_turns_and_meta(
    make_client: ClientFactory,
) -> None:
    a = await make_client()
    b = await make_client()
    await a.append_turn("s", user("q1"))
    assert [t.content for t in (await b.load_context("s")).turns] == ["q1"]
    await a.append_turn("s", user("q2"))
    ctx = await b.load_context("s")
    assert [t.content for t in ctx.turns] == ["q1", "q2"] and ctx.source == "store"
    await a.update_meta("s", page_context={"asin": "B1"})
    ctx = await b.load_context("s")
    # Same turns, newer META: turns from L1, META from the store.
    assert ctx.source == "l1+store" and ctx.meta is not None
    assert ctx.meta.page_context == {"asin": "B1"}
    await a.delete_session("s")
    assert (await b.load_context("s")).meta is None


async def test_sticky_trusts_l1_and_may_lag(make_client: ClientFactory) -> None:
    a = await make_client()
    b = await make_client(consistency="sticky")
    await a.append_turn("s", user("q1"))
    assert [t.content for t in (await b.load_context("s")).turns] == ["q1"]
    await a.append_turn("s", user("q2"))
    ctx = await b.load_context("s")
    # Documented: sticky mode assumes session affinity; another writer's turn is not seen.
    assert [t.content for t in ctx.turns] == ["q1"] and ctx.source == "l1"
    await b.append_turn("s", user("q3"))  # its compare-and-set still sees q2: nothing lost
    ctx = await b.load_context("s")
    assert [t.content for t in ctx.turns] == ["q1", "q2", "q3"]


async def test_strong_always_reads_the_store(
    make_client: ClientFactory, store_settings: dict[str, Any]
) -> None:
    mem, counting = await counted(make_client, store_settings, consistency="strong")
    await mem.append_turn("s", user("q1"))
    counting.reset()
    ctx = await mem.load_context("s")
    assert ctx.source == "store" and counting.calls == {"get_meta": 1, "query_turns": 1}


async def test_l1_is_bounded_in_bytes(make_client: ClientFactory) -> None:
    mem = await make_client(l1_max_bytes=40_000)
    for i in range(40):
        await mem.append_turn(f"s{i}", Turn(role="user", content="x" * 2_000))
    h = mem.health()
    assert 0 < h.l1_bytes <= 40_000 and h.l1_evictions > 0 and h.l1_entries < 40
    for i in range(40):  # evicted sessions are misses, never losses
        assert [len(t.content) for t in (await mem.load_context(f"s{i}")).turns] == [2_000]


async def test_l1_disabled_still_correct(make_client: ClientFactory) -> None:
    mem = await make_client(l1_max_bytes=0)
    await mem.append_turn("s", user("q1"))
    assert (await mem.load_context("s")).source == "store"
    assert mem.health().l1_entries == 0


async def test_window_with_tool_turns_from_l1(make_client: ClientFactory) -> None:
    mem = await make_client()
    await mem.append_turns(
        "s",
        [
            user("q"),
            Turn(role="assistant", content="call"),
            Turn(role="tool", content="r1"),
            Turn(role="tool", content="r2"),
            Turn(role="assistant", content="done"),
        ],
    )
    ctx = await mem.load_context("s", last_n=3)
    assert ctx.source.startswith("l1")
    assert [t.content for t in ctx.turns] == ["call", "r1", "r2", "done"]


async def test_last_n_beyond_l1_depth_reads_the_store(make_client: ClientFactory) -> None:
    writer = await make_client()
    for i in range(40):
        await writer.append_turn("s", user(f"m{i}"))
    reader = await make_client()
    await reader.load_context("s")  # fills L1 with the newest 20 (+ slack)
    ctx = await reader.load_context("s", last_n=35)
    assert ctx.source == "store" and len(ctx.turns) == 35
    assert ctx.turns[-1].content == "m39"


async def test_expiry_seen_through_l1(make_client: ClientFactory, clock: Any) -> None:
    mem = await make_client(consistency="sticky")
    await mem.append_turn("s", user("q1"))
    clock.advance(mem.config.ttl_seconds + 1)
    assert (await mem.load_context("s")).meta is None


_examples = itertools.count()
ops = st.lists(
    st.tuples(st.sampled_from(["append", "load", "meta"]), st.integers(0, 1), st.integers(0, 2)),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=ops)
async def test_validated_never_stale_under_interleavings(
    make_client: ClientFactory, ops: list[tuple[str, int, int]]
) -> None:
    """Any interleaving of two writers/readers: every read equals the model's newest turns."""
    clients = [await make_client(last_n=5), await make_client(last_n=5)]
    sid = f"hyp-{next(_examples)}"
    model: list[str] = []
    page: dict[str, int] = {}
    for n, (op, who, arg) in enumerate(ops):
        mem = clients[who]
        if op == "append":
            turns = [user(f"{who}.{n}.{k}") for k in range(arg + 1)]
            await mem.append_turns(sid, turns)
            model.extend(t.content for t in turns)
        elif op == "meta":
            page = {"step": n}
            await mem.update_meta(sid, page_context=page)
        else:
            ctx = await mem.load_context(sid)
            assert [t.content for t in ctx.turns] == model[-5:]
            assert (ctx.meta.page_context if ctx.meta else {}) == page
            assert (ctx.meta.turn_count if ctx.meta else 0) == len(model)


async def test_append_after_load_is_one_round_trip_even_without_l1(
    make_client: ClientFactory, store_settings: dict[str, Any]
) -> None:
    mem, counting = await counted(make_client, store_settings, l1_max_bytes=0)
    await mem.append_turn("s", user("q1"))
    other = await make_client()
    await other.append_turn("s", user("q2"))  # mem's view of META is stale now
    await mem.load_context("s")
    counting.reset()
    await mem.append_turn("s", user("q3"))
    assert counting.calls == {"commit": 1}  # planned on the META the load saw: no retry
    ctx = await other.load_context("s")
    assert [t.content for t in ctx.turns] == ["q1", "q2", "q3"]


async def test_a_flushed_turn_that_sorts_below_the_newest_is_not_hidden_by_l1(
    make_client: ClientFactory, tmp_path: Path, clock: FakeClock
) -> None:
    """Found by tests/property: a buffered turn from a writer whose clock is behind sorts
    below the newest turn, so META's newest id did not change and L1 kept the old window."""
    writer = await make_client()
    reader = await make_client()
    behind = FakeClock(clock.time_ms() - 1_000)  # this process's clock is 1 s behind
    buffered = await make_client(clock_=behind, wal_dir=str(tmp_path / "wal"))
    await writer.append_turns("s", [user("w1"), user("w2")])
    assert [t.content for t in (await reader.load_context("s")).turns] == ["w1", "w2"]
    await buffered.append_turn("s", user("late"))  # never saw the session: sorts first
    await buffered.flush(timeout=30)
    ctx = await reader.load_context("s")
    assert ctx.meta is not None and ctx.meta.turn_count == 3
    assert [t.content for t in ctx.turns] == ["late", "w1", "w2"]
