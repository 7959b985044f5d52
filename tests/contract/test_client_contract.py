"""The client's contract (docs/guarantees.md), run through the public API on every store.

Each test gets a fresh SQLite file or a fresh DynamoDB Local table (see tests/conftest.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memsdk import MemoryClient, Turn, errors
from memsdk.config import Config
from memsdk.testing import CountingStore, FakeClock, FaultyStore
from memsdk.wiring import build_store
from tests.conftest import TEST_TIMEOUTS, ClientFactory

pytestmark = pytest.mark.asyncio


def user(text: str, **kw: Any) -> Turn:
    return Turn(role="user", content=text, **kw)


def bot(text: str, **kw: Any) -> Turn:
    return Turn(role="assistant", content=text, **kw)


async def test_absent_session_reads_empty(mem: MemoryClient) -> None:
    ctx = await mem.load_context("sess-new")
    assert ctx.meta is None and ctx.turns == [] and ctx.summary is None
    assert not ctx.degraded and not ctx.exists


async def test_append_then_load_round_trip(mem: MemoryClient, clock: FakeClock) -> None:
    receipt = await mem.append_turns(
        "sess-1",
        [
            user("Show me horror manga", intent="product_discovery"),
            bot("Here are 3 horror manga...", attributes={"cards": [{"asin": "B0"}]}),
        ],
        customer_id="C123",
    )
    assert receipt.durable and len(receipt.turn_ids) == 2
    assert receipt.turn_ids[0] < receipt.turn_ids[1]
    ctx = await mem.load_context("sess-1", customer_id="C123")
    assert ctx.meta is not None
    assert [t.content for t in ctx.turns] == ["Show me horror manga", "Here are 3 horror manga..."]
    assert [t.turn_id for t in ctx.turns] == receipt.turn_ids
    assert ctx.turns[0].intent == "product_discovery"
    assert ctx.turns[1].attributes == {"cards": [{"asin": "B0"}]}
    assert all(t.created_at_ms == clock.now_ms for t in ctx.turns)
    assert ctx.meta.customer_id == "C123"
    assert ctx.meta.turn_count == 2
    assert ctx.meta.last_turn_id == receipt.turn_ids[-1]
    assert ctx.meta.created_at_ms == clock.now_ms
    assert ctx.meta.expires_at == clock.now_ms // 1000 + mem.config.ttl_seconds


async def test_same_millisecond_turns_both_survive_in_order(mem: MemoryClient) -> None:
    # The fake clock never moves: every id below is minted in the same millisecond.
    first = await mem.append_turns("sess-ms", [user("a"), bot("b")])
    second = await mem.append_turns("sess-ms", [user("c"), bot("d")])
    ids = first.turn_ids + second.turn_ids
    assert len(set(ids)) == 4 and ids == sorted(ids)
    assert len({i[:13] for i in ids}) == 1
    ctx = await mem.load_context("sess-ms")
    assert [t.content for t in ctx.turns] == ["a", "b", "c", "d"]
    assert ctx.meta is not None and ctx.meta.turn_count == 4


async def test_append_turn_single(mem: MemoryClient) -> None:
    receipt = await mem.append_turn("sess-one", user("hi"))
    ctx = await mem.load_context("sess-one")
    assert [t.turn_id for t in ctx.turns] == receipt.turn_ids


async def test_last_n_window_and_override(mem: MemoryClient) -> None:
    for i in range(30):
        await mem.append_turn("sess-long", user(f"m{i}"))
    ctx = await mem.load_context("sess-long")
    assert [t.content for t in ctx.turns] == [f"m{i}" for i in range(10, 30)]
    ctx5 = await mem.load_context("sess-long", last_n=5)
    assert [t.content for t in ctx5.turns] == [f"m{i}" for i in range(25, 30)]
    assert ctx5.meta is not None and ctx5.meta.turn_count == 30


async def test_thousand_turn_session_reads_only_newest_n(
    make_client: ClientFactory, store_settings: dict[str, Any]
) -> None:
    writer = await make_client()
    for start in range(0, 1000, 50):
        await writer.append_turns("sess-k", [user(f"m{i}") for i in range(start, start + 50)])
    counting = CountingStore(build_store(Config(**store_settings)))
    cold = await make_client(store=counting)  # another process: nothing in its L1
    ctx = await cold.load_context("sess-k", last_n=20)
    assert [t.content for t in ctx.turns] == [f"m{i}" for i in range(980, 1000)]
    # META plus exactly the 20 newest TURN items: the cost does not grow with the session.
    assert counting.items_read == 21
    assert counting.calls["query_turns"] == 1 and counting.calls["get_meta"] == 1
    assert ctx.source == "store"
    counting.reset()
    again = await cold.load_context("sess-k", last_n=20)
    # Warm: L1 validated against META alone (no Redis configured here).
    assert again.turns == ctx.turns and again.source == "l1+store"
    assert counting.items_read == 1 and counting.calls["query_turns"] == 0


async def test_tool_turn_never_starts_a_window(mem: MemoryClient) -> None:
    await mem.append_turns(
        "sess-tool",
        [
            user("find a manga"),
            bot("calling search", attributes={"tool_call": "search"}),
            Turn(role="tool", content="result 1"),
            Turn(role="tool", content="result 2"),
            bot("here you go"),
        ],
    )
    ctx = await mem.load_context("sess-tool", last_n=3)
    # The newest 3 start with a tool result: the window moves back to the calling turn.
    assert [t.content for t in ctx.turns] == [
        "calling search",
        "result 1",
        "result 2",
        "here you go",
    ]
    assert ctx.turns[0].role == "assistant"


async def test_a_session_that_begins_with_tool_turns_returns_them(
    mem: MemoryClient, make_client: ClientFactory
) -> None:
    # Guarantee 9 never drops an acknowledged turn: with no caller anywhere in the session,
    # the window starts at its first turn (a tool output appended alone read back empty).
    big = "x" * 200_000
    receipt = await mem.append_turns("sess-tool-only", [Turn(role="tool", content=big)])
    await mem.append_turns("sess-orphan", [Turn(role="tool", content="t"), bot("after")])
    cold = await make_client()  # another process: nothing in its L1
    for client in (mem, cold, mem):  # warm L1, a cold store read, then L1 again
        alone = await client.load_context("sess-tool-only")
        assert [t.turn_id for t in alone.turns] == receipt.turn_ids
        assert alone.turns[0].content == big
        ctx = await client.load_context("sess-orphan")
        assert [t.content for t in ctx.turns] == ["t", "after"]
        assert ctx.meta is not None and ctx.meta.turn_count == 2
        # The newest turn alone is a whole window: no tool result without its caller.
        assert [t.content for t in (await client.load_context("sess-orphan", last_n=1)).turns] == [
            "after"
        ]


async def test_ttl_expiry_and_sliding(mem: MemoryClient, clock: FakeClock) -> None:
    ttl = mem.config.ttl_seconds
    await mem.append_turn("sess-ttl", user("hello"))
    clock.advance(ttl - 10)
    assert (await mem.load_context("sess-ttl")).meta is not None
    await mem.append_turn("sess-ttl", user("still here"))  # slides the whole session
    clock.advance(ttl - 10)
    ctx = await mem.load_context("sess-ttl")
    assert [t.content for t in ctx.turns] == ["hello", "still here"]
    clock.advance(11)
    ctx = await mem.load_context("sess-ttl")
    assert ctx.meta is None and ctx.turns == []
    with pytest.raises(errors.ContextLostError):
        await mem.load_context("sess-ttl", expect_existing=True)


async def test_expired_session_id_reused_starts_empty(mem: MemoryClient, clock: FakeClock) -> None:
    await mem.append_turns("sess-reuse", [user("old 1"), bot("old 2")], customer_id="A")
    await mem.update_meta("sess-reuse", page_context={"asin": "OLD"})
    clock.advance(mem.config.ttl_seconds + 1)
    # Any customer may claim an expired id; nothing of the old incarnation reappears.
    await mem.append_turn("sess-reuse", user("new 1"), customer_id="B")
    ctx = await mem.load_context("sess-reuse", customer_id="B")
    assert [t.content for t in ctx.turns] == ["new 1"]
    assert ctx.meta is not None
    assert ctx.meta.turn_count == 1 and ctx.meta.customer_id == "B"
    assert ctx.meta.page_context == {} and ctx.summary is None


async def test_expired_reuse_from_another_client_without_hints(
    make_client: ClientFactory, clock: FakeClock
) -> None:
    a = await make_client()
    await a.append_turns("sess-x", [user("old"), bot("old reply")])
    clock.advance(a.config.ttl_seconds + 5)
    b = await make_client()  # knows nothing about the session
    await b.append_turn("sess-x", user("fresh"))
    for client in (a, b):
        ctx = await client.load_context("sess-x")
        assert [t.content for t in ctx.turns] == ["fresh"]


async def test_expect_existing(mem: MemoryClient) -> None:
    with pytest.raises(errors.ContextLostError) as info:
        await mem.load_context("sess-missing", expect_existing=True)
    assert info.value.session_id == "sess-missing"
    await mem.append_turn("sess-missing", user("now it exists"))
    ctx = await mem.load_context("sess-missing", expect_existing=True)
    assert len(ctx.turns) == 1


async def test_ownership(mem: MemoryClient) -> None:
    await mem.append_turn("sess-own", user("mine"), customer_id="C1")
    with pytest.raises(errors.SessionOwnershipError):
        await mem.load_context("sess-own", customer_id="C2")
    with pytest.raises(errors.SessionOwnershipError):
        await mem.append_turn("sess-own", user("intruder"), customer_id="C2")
    with pytest.raises(errors.SessionOwnershipError):
        await mem.update_meta("sess-own", page_context={"x": 1}, customer_id="C2")
    with pytest.raises(errors.SessionOwnershipError):
        await mem.delete_session("sess-own", customer_id="C2")
    ctx = await mem.load_context("sess-own")  # trusted caller: no check
    assert [t.content for t in ctx.turns] == ["mine"]
    assert ctx.meta is not None and ctx.meta.page_context == {}
    await mem.append_turn("sess-own", bot("reply"), customer_id="C1")
    assert (await mem.load_context("sess-own", customer_id="C1")).meta.turn_count == 2  # type: ignore[union-attr]


async def test_ownership_checked_by_a_client_with_no_hint(make_client: ClientFactory) -> None:
    a = await make_client()
    b = await make_client()
    await a.append_turn("sess-own2", user("mine"), customer_id="C1")
    with pytest.raises(errors.SessionOwnershipError):
        await b.append_turn("sess-own2", user("intruder"), customer_id="C2")
    ctx = await a.load_context("sess-own2")
    assert [t.content for t in ctx.turns] == ["mine"]


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a" * 129,
        "has space",
        "slash/id",
        "../etc",
        "brace{x}",
        "nul\x00",
        "é",
        "tab\t",
        "trailing-newline\n",
        "\nleading-newline",
        "x" * 3000,
        None,
        42,
        b"bytes",
    ],
)
async def test_invalid_session_ids_rejected_before_io(
    make_client: ClientFactory, store_settings: dict[str, Any], bad: Any
) -> None:
    counting = CountingStore(build_store(Config(**store_settings)))
    mem = await make_client(store=counting)
    for call in (
        mem.load_context(bad),
        mem.append_turn(bad, user("x")),
        mem.update_meta(bad, attributes={}),
        mem.put_summary(bad, "s", through_turn_id="0" * 25),
        mem.delete_session(bad),
    ):
        with pytest.raises(errors.InvalidSessionIdError):
            await call
    assert sum(counting.calls.values()) == 0


async def test_valid_session_id_edge_cases(mem: MemoryClient) -> None:
    for sid in ("a", "A" * 128, "x.y:z-1_2", "SESSION#"[:7]):
        await mem.append_turn(sid, user(sid))
        assert [t.content for t in (await mem.load_context(sid)).turns] == [sid]


async def test_oversized_turn_refused_and_session_unchanged(
    make_client: ClientFactory, store_settings: dict[str, Any]
) -> None:
    counting = CountingStore(build_store(Config(**store_settings)))
    mem = await make_client(store=counting)
    await mem.append_turn("sess-big", user("small"))
    counting.reset()
    big = "é" * 175_001  # 350,002 bytes of UTF-8: over the cap although under 350k chars
    with pytest.raises(errors.TurnTooLargeError) as info:
        await mem.append_turns("sess-big", [user("ok"), bot(big)])
    assert info.value.session_id == "sess-big"
    assert counting.calls["commit"] == 0
    ctx = await mem.load_context("sess-big")
    assert [t.content for t in ctx.turns] == ["small"]
    assert ctx.meta is not None and ctx.meta.turn_count == 1


async def test_largest_allowed_turn_is_stored(make_client: ClientFactory) -> None:
    mem = await make_client(max_turn_bytes=300_000)
    content = "x" * 299_000
    await mem.append_turn("sess-large", bot(content))
    ctx = await mem.load_context("sess-large")
    assert ctx.turns[0].content == content


@pytest.mark.parametrize(
    ("turns", "error"),
    [
        ([], errors.InvalidTurnError),
        ([Turn(role="robot", content="x")], errors.InvalidTurnError),  # type: ignore[arg-type]
        ([Turn(role="user", content="x", attributes={"n": float("nan")})], errors.InvalidTurnError),
        ([Turn(role="user", content="x", attributes={1: "int key"})], errors.InvalidTurnError),  # type: ignore[dict-item]
        ([Turn(role="user", content="x", attributes={"t": (1, 2)})], errors.InvalidTurnError),
        ([Turn(role="user", content="x", attributes={"o": object()})], errors.InvalidTurnError),
        ([Turn(role="user", content="\ud800")], errors.InvalidTurnError),
        ([Turn(role="user", content="x")] * 100, errors.InvalidTurnError),
        ("not a list", errors.InvalidTurnError),
    ],
)
async def test_malformed_turns_rejected(mem: MemoryClient, turns: Any, error: type) -> None:
    with pytest.raises(error):
        await mem.append_turns("sess-bad-turn", turns)
    assert (await mem.load_context("sess-bad-turn")).meta is None


async def test_update_meta_replaces_fields_whole(mem: MemoryClient, clock: FakeClock) -> None:
    await mem.append_turn("sess-meta", user("hi"), customer_id="C")
    await mem.update_meta("sess-meta", page_context={"asin": "B1", "extra": 1}, attributes={"a": 1})
    clock.advance(5)
    meta = await mem.update_meta("sess-meta", page_context={"asin": "B2"})
    assert meta.page_context == {"asin": "B2"} and meta.attributes == {"a": 1}
    ctx = await mem.load_context("sess-meta")
    assert ctx.meta == meta
    assert ctx.meta.turn_count == 1 and ctx.meta.updated_at_ms == clock.now_ms
    assert ctx.meta.expires_at == clock.now_ms // 1000 + mem.config.ttl_seconds


async def test_update_meta_creates_absent_session(mem: MemoryClient) -> None:
    meta = await mem.update_meta("sess-landing", page_context={"asin": "B3"}, customer_id="C9")
    assert meta.turn_count == 0 and meta.last_turn_id is None and meta.customer_id == "C9"
    ctx = await mem.load_context("sess-landing", expect_existing=True)
    assert ctx.turns == [] and ctx.meta == meta
    await mem.append_turn("sess-landing", user("first"))
    assert (await mem.load_context("sess-landing")).meta.page_context == {"asin": "B3"}  # type: ignore[union-attr]


async def test_summary_newest_by_through_id_whatever_the_order(mem: MemoryClient) -> None:
    r = await mem.append_turns("sess-sum", [user(f"m{i}") for i in range(6)])
    newer = await mem.put_summary("sess-sum", "through 5", through_turn_id=r.turn_ids[5])
    await mem.put_summary("sess-sum", "through 2", through_turn_id=r.turn_ids[2])  # late, older
    ctx = await mem.load_context("sess-sum")
    assert ctx.summary == newer
    assert ctx.summary is not None and ctx.summary.text == "through 5"


async def test_put_summary_errors(mem: MemoryClient) -> None:
    with pytest.raises(errors.InvalidTurnError):
        await mem.put_summary("sess-sum2", "x", through_turn_id="not-an-id")
    with pytest.raises(errors.ContextLostError):
        await mem.put_summary("sess-sum2", "x", through_turn_id="1" * 13 + "0" * 12)
    r = await mem.append_turn("sess-sum2", user("a"), customer_id="C1")
    with pytest.raises(errors.InvalidTurnError):  # an id the session never issued
        await mem.put_summary("sess-sum2", "x", through_turn_id="9" * 13 + "0" * 12)
    with pytest.raises(errors.SessionOwnershipError):
        await mem.put_summary("sess-sum2", "x", through_turn_id=r.turn_ids[0], customer_id="C2")
    assert (await mem.load_context("sess-sum2")).summary is None


async def test_summary_through_a_turn_another_client_appended(make_client: ClientFactory) -> None:
    """Found by tests/property: a stale META hint made put_summary refuse a real turn id."""
    a = await make_client()
    b = await make_client()
    await a.append_turn("sess-sum4", user("a"))  # a's hint: META with only its own turn
    r = await b.append_turn("sess-sum4", bot("b"))
    summary = await a.put_summary("sess-sum4", "through b", through_turn_id=r.turn_ids[0])
    assert summary.through_turn_id == r.turn_ids[0]
    assert (await b.load_context("sess-sum4")).summary == summary


async def test_summary_of_old_incarnation_is_gone(mem: MemoryClient, clock: FakeClock) -> None:
    r = await mem.append_turn("sess-sum3", user("a"))
    await mem.put_summary("sess-sum3", "old summary", through_turn_id=r.turn_ids[0])
    clock.advance(mem.config.ttl_seconds + 1)
    await mem.append_turn("sess-sum3", user("b"))
    assert (await mem.load_context("sess-sum3")).summary is None


async def test_delete_session(mem: MemoryClient) -> None:
    await mem.delete_session("sess-never")  # unknown: a no-op
    r = await mem.append_turns("sess-del", [user("a"), bot("b")], customer_id="C")
    await mem.put_summary("sess-del", "s", through_turn_id=r.turn_ids[1])
    await mem.append_turn("sess-keep", user("other"))
    await mem.delete_session("sess-del", customer_id="C")
    assert (await mem.load_context("sess-del")).meta is None
    await mem.append_turn("sess-del", user("again"), customer_id="D")
    ctx = await mem.load_context("sess-del")
    assert [t.content for t in ctx.turns] == ["again"] and ctx.summary is None
    assert ctx.meta is not None and ctx.meta.turn_count == 1
    assert [t.content for t in (await mem.load_context("sess-keep")).turns] == ["other"]


class PurgeFails(FaultyStore):
    """The tombstone commit lands; the purge after it fails (an outage in between)."""

    async def purge_session(self, session_id: str, *, through_turn_id: str) -> None:
        raise errors.StoreUnavailableError("purge failed (test)", session_id=session_id)


async def test_delete_whose_purge_fails_says_it_may_have_applied(
    make_client: ClientFactory, store_settings: dict[str, Any]
) -> None:
    """Found by tests/property: the session was gone, yet the error said nothing was done."""
    store = PurgeFails(build_store(Config(**store_settings)))
    mem = await make_client(store=store)
    await mem.append_turn("sess-del-purge", user("a"))
    with pytest.raises(errors.StoreUnavailableError) as raised:
        await mem.delete_session("sess-del-purge")
    assert raised.value.maybe_applied
    assert (await mem.load_context("sess-del-purge")).meta is None  # hidden: it did apply


async def test_delete_removes_items_from_the_store(
    make_client: ClientFactory, store_settings: dict[str, Any]
) -> None:
    counting = CountingStore(build_store(Config(**store_settings)))
    mem = await make_client(store=counting)
    r = await mem.append_turns("sess-purge", [user(f"m{i}") for i in range(30)])
    await mem.put_summary("sess-purge", "s", through_turn_id=r.turn_ids[-1])
    await mem.delete_session("sess-purge")
    # Only the tombstone remains: no turn, no summary, no user data, read as absent.
    tombstone = await counting.inner.get_meta("sess-purge", consistent=True)
    assert tombstone is not None and tombstone.deleted
    assert (tombstone.customer_id, tombstone.summary) == (None, None)
    assert (tombstone.page_context, tombstone.attributes) == ({}, {})
    assert (
        await counting.inner.query_turns(
            "sess-purge", before_turn_id=None, limit=100, consistent=True
        )
        == []
    )


async def test_isolation_between_sessions(mem: MemoryClient) -> None:
    await mem.append_turns("sess-A", [user("a1"), bot("a2")], customer_id="CA")
    await mem.append_turns("sess-A.1", [user("b1")], customer_id="CB")
    await mem.update_meta("sess-A.1", page_context={"p": "b"})
    ctx_a = await mem.load_context("sess-A")
    ctx_b = await mem.load_context("sess-A.1")
    assert [t.content for t in ctx_a.turns] == ["a1", "a2"]
    assert [t.content for t in ctx_b.turns] == ["b1"]
    assert ctx_a.meta is not None and ctx_a.meta.page_context == {}
    await mem.delete_session("sess-A")
    assert [t.content for t in (await mem.load_context("sess-A.1")).turns] == ["b1"]


async def test_writer_sorts_after_what_it_saw_despite_clock_skew(
    make_client: ClientFactory, clock: FakeClock
) -> None:
    ahead = await make_client(clock_=FakeClock(clock.now_ms + 600_000))  # 10 min fast
    behind = await make_client(clock_=FakeClock(clock.now_ms - 600_000))  # 10 min slow
    await ahead.append_turns("sess-skew", [user("q1"), bot("a1")])
    seen = await behind.load_context("sess-skew")
    r = await behind.append_turns("sess-skew", [user("q2"), bot("a2")])
    assert seen.meta is not None and r.turn_ids[0] > seen.meta.last_turn_id  # type: ignore[operator]
    await ahead.append_turn("sess-skew", user("q3"))
    for client in (ahead, behind):
        ctx = await client.load_context("sess-skew")
        assert [t.content for t in ctx.turns] == ["q1", "a1", "q2", "a2", "q3"]
        assert ctx.meta is not None and ctx.meta.turn_count == 5


async def test_concurrent_writers_keep_both_sets(make_client: ClientFactory) -> None:
    a = await make_client()
    b = await make_client()

    async def write(client: MemoryClient, tag: str) -> list[str]:
        ids: list[str] = []
        for i in range(8):
            ids += (await client.append_turns("sess-conc", [user(f"{tag}{i}")])).turn_ids
        return ids

    ids_a, ids_b = await asyncio.gather(write(a, "a"), write(b, "b"))
    ctx = await a.load_context("sess-conc", last_n=100)
    contents = [t.content for t in ctx.turns]
    assert sorted(contents) == sorted([f"a{i}" for i in range(8)] + [f"b{i}" for i in range(8)])
    assert [c for c in contents if c[0] == "a"] == [f"a{i}" for i in range(8)]
    assert [c for c in contents if c[0] == "b"] == [f"b{i}" for i in range(8)]
    assert [t.turn_id for t in ctx.turns] == sorted(ids_a + ids_b)
    assert ctx.meta is not None and ctx.meta.turn_count == 16


class CommitBetweenQueryAndMeta(CountingStore):
    """A reader's store: another client commits after the Query answered, before GetItem."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.queried = asyncio.Event()
        self.between: Any = None  # an async callable run once between the two reads

    async def query_turns(
        self, session_id: str, *, before_turn_id: str | None, limit: int, consistent: bool
    ) -> Any:
        turns = await super().query_turns(
            session_id, before_turn_id=before_turn_id, limit=limit, consistent=consistent
        )
        self.queried.set()
        return turns

    async def get_meta(self, session_id: str, *, consistent: bool) -> Any:
        if self.between is not None:
            between, self.between = self.between, None
            await self.queried.wait()
            await between()
        return await super().get_meta(session_id, consistent=consistent)


@pytest.mark.parametrize("consistency", ["strong", "validated"])
async def test_a_commit_between_the_two_reads_never_tears_the_answer(
    make_client: ClientFactory, store_settings: dict[str, Any], consistency: str
) -> None:
    """Found by tests/property: META newer than the turns read beside it, in strong mode."""
    writer = await make_client()
    store = CommitBetweenQueryAndMeta(build_store(Config(**store_settings)))
    reader = await make_client(store=store, consistency=consistency, l1_max_bytes=0)
    await writer.append_turn("sess-tear", user("a"))
    store.between = lambda: writer.append_turn("sess-tear", user("b"))
    ctx = await reader.load_context("sess-tear")
    assert ctx.meta is not None and ctx.meta.turn_count == 2
    assert [t.content for t in ctx.turns] == ["a", "b"]


async def test_closed_client_raises(make_client: ClientFactory) -> None:
    mem = await make_client()
    await mem.aclose()
    await mem.aclose()  # idempotent
    with pytest.raises(errors.ClientClosedError):
        await mem.load_context("sess")
    with pytest.raises(errors.ClientClosedError):
        await mem.append_turn("sess", user("x"))
    with pytest.raises(errors.ClientClosedError):
        await mem.open()
    assert mem.health().open is False


async def test_health_and_flush(mem: MemoryClient, store_url: str) -> None:
    await mem.flush()
    await mem.flush(timeout=1.0)
    h = mem.health()
    expected = "sqlite" if store_url.startswith("sqlite") else "dynamodb:memsdk-test-"
    assert h.open and h.store.startswith(expected)
    assert h.store_breaker == "closed" and h.redis_breaker == "off"  # no Redis configured
    assert h.wal_pending_records == 0 and h.l1_max_bytes == mem.config.l1_max_bytes


async def test_async_context_manager(store_settings: dict[str, Any]) -> None:
    async with MemoryClient(Config(**store_settings, **TEST_TIMEOUTS)) as mem:
        await mem.append_turn("sess-cm", user("x"))
        assert len((await mem.load_context("sess-cm")).turns) == 1
    with pytest.raises(errors.ClientClosedError):
        await mem.load_context("sess-cm")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    content=st.text(),
    intent=st.none() | st.text(max_size=40),
    attributes=st.dictionaries(st.text(max_size=20), json_values, max_size=5),
    role=st.sampled_from(["user", "assistant", "system"]),
)
async def test_round_trip_arbitrary_unicode_and_json(
    mem: MemoryClient, content: str, intent: str | None, attributes: dict[str, Any], role: Any
) -> None:
    sid = f"sess-rt-{abs(hash((content, intent, repr(attributes)))) % 10**12}"
    await mem.delete_session(sid)
    turn = Turn(role=role, content=content, intent=intent, attributes=attributes)
    try:
        receipt = await mem.append_turn(sid, turn)
    except errors.InvalidTurnError:
        # Only text that is not valid Unicode is refused; everything else must round-trip.
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in content + (intent or "") + repr(attributes))
        return
    ctx = await mem.load_context(sid)
    assert len(ctx.turns) == 1
    got = ctx.turns[0]
    assert (got.role, got.content, got.intent, got.turn_id) == (
        role,
        content,
        intent,
        receipt.turn_ids[0],
    )
    assert got.attributes == attributes


class HeldAfterTheStoreAnswered(CountingStore):
    """Once armed, a read gets its answer from the store and then waits for `release`."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.armed = False
        self.answered = asyncio.Event()
        self.release = asyncio.Event()

    async def query_turns(
        self, session_id: str, *, before_turn_id: str | None, limit: int, consistent: bool
    ) -> Any:
        turns = await super().query_turns(
            session_id, before_turn_id=before_turn_id, limit=limit, consistent=consistent
        )
        if self.armed:
            self.armed = False
            self.answered.set()
            await self.release.wait()
        return turns


async def test_a_read_never_caches_its_answer_over_a_newer_write_of_this_process(
    make_client: ClientFactory, store_settings: dict[str, Any]
) -> None:
    """Found by tests/property: a sticky read that began before this process's own append
    put its older window into L1 after the append's, and the next sticky read served it
    without the appended turn."""
    writer = await make_client()
    store = HeldAfterTheStoreAnswered(build_store(Config(**store_settings)))
    mem = await make_client(store=store, consistency="sticky")
    await writer.append_turn("sess-race", user("a"))
    store.armed = True
    read = asyncio.ensure_future(mem.load_context("sess-race"))
    await store.answered.wait()  # the store said [a]; the answer is not cached yet
    await mem.append_turn("sess-race", user("b"))
    store.release.set()
    assert [t.content for t in (await read).turns] == ["a"]  # true when it was read
    ctx = await mem.load_context("sess-race")
    assert [t.content for t in ctx.turns] == ["a", "b"]


class LaggingMeta(FaultyStore):
    """Eventually consistent reads of META return what it was at `freeze()`, as a DynamoDB
    replica that has not caught up would (DynamoDB Local itself is always consistent)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.frozen: dict[str, Any] = {}
        self.lagging_reads = 0

    async def freeze(self, session_id: str) -> None:
        self.frozen[session_id] = await self.inner.get_meta(session_id, consistent=True)

    async def get_meta(self, session_id: str, *, consistent: bool) -> Any:
        if not consistent and session_id in self.frozen:
            self.lagging_reads += 1
            return self.frozen[session_id]
        return await super().get_meta(session_id, consistent=consistent)


async def test_sticky_never_reads_a_meta_older_than_its_own_write(
    make_client: ClientFactory, store_settings: dict[str, Any]
) -> None:
    """Defect 7 (issue 13): a sticky read that L1 could not serve read META eventually
    consistent and served (and cached) a META older than the process's own append."""
    store = LaggingMeta(build_store(Config(**store_settings)))
    mem = await make_client(store=store, consistency="sticky")
    await mem.append_turns("s1", [user(f"m{i}") for i in range(29)])
    await store.freeze("s1")  # a replica stuck before the next append
    own = await mem.append_turn("s1", user("mine"))
    # L1 holds the newest 28 turns (last_n + slack): a 40-turn window needs the store.
    ctx = await mem.load_context("s1", last_n=40)
    assert ctx.turns[-1].turn_id == own.turn_ids[0]
    assert ctx.meta is not None and ctx.meta.turn_count == 30
    assert store.lagging_reads == 0
    # A process that never saw the session may read a lagging replica (sticky's promise
    # is about this process's own writes only).
    other = await make_client(store=store, consistency="sticky")
    await other.load_context("s1", last_n=40)
    assert store.lagging_reads == 1


async def test_an_oversized_summary_is_refused_before_any_io(
    make_client: ClientFactory, store_settings: dict[str, Any], tmp_path: Any
) -> None:
    """Defect 8 (issue 13): the size was checked only after a consistent get_meta, and
    after waiting for the session's buffered appends to drain."""
    counting = CountingStore(build_store(Config(**store_settings)))
    mem = await make_client(store=counting, wal_dir=str(tmp_path / "wal"))
    receipt = await mem.append_turn("s1", user("hi"))
    counting.reset()
    with pytest.raises(errors.TurnTooLargeError) as info:
        await mem.put_summary(
            "s1", "x" * (mem.config.max_turn_bytes + 1), through_turn_id=receipt.turn_ids[0]
        )
    assert info.value.session_id == "s1"
    assert sum(counting.calls.values()) == 0
