"""memsdk.faultproxy in front of a real DynamoDB Local, driven by memsdk's public client.

The proxy's request counts are exact, so these tests also measure what memsdk sends per
call (first attempts and retries) under each fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from memsdk import Config, MemoryClient, Turn
from memsdk.errors import MemsdkError, StoreUnavailableError
from memsdk.faultproxy import FaultCounts, FaultMode, FaultProxy

pytestmark = pytest.mark.dynamodb

# Generous where the test is not about time: a cold JVM on a noisy machine can be slow.
SLOW_OK = {"read_timeout": 10.0, "write_timeout": 10.0}
# What a stall of this process (a busy 2-core machine) may add to a call it measures.
STALL_S = 3.0
TURNS = [Turn(role="user", content="Show me horror manga"), Turn(role="assistant", content="3!")]

# Chosen so that no 6 consecutive draws of the first 800 at p=0.1 hold 3 faults. One
# load_context makes at most 6 requests (GetItem and Query, 3 attempts each), so with this
# seed no call can be throttled 3 times in a row, whatever order the two arrive in.
SEED = 84

ClientFactory = Callable[..., Awaitable[MemoryClient]]


@pytest.fixture
async def make_client(proxied_url: str, proxy: FaultProxy) -> AsyncIterator[ClientFactory]:
    """Open MemoryClients on the proxied table; counts start at zero once a client is open."""
    clients: list[MemoryClient] = []

    async def factory(**overrides: Any) -> MemoryClient:
        client = MemoryClient(Config(**{"store": proxied_url, **SLOW_OK, **overrides}))
        await client.open()
        clients.append(client)
        proxy.reset_counts()
        return client

    yield factory
    for client in clients:
        await client.aclose()


def new_session() -> str:
    return f"sess-{uuid.uuid4().hex[:12]}"


def assert_consistent(counts: FaultCounts) -> None:
    """Every request read has exactly one outcome and one operation."""
    assert sum(counts.by_outcome.values()) == counts.requests_total
    assert sum(counts.by_operation.values()) == counts.requests_total


async def expect_unavailable(call: Awaitable[object]) -> tuple[StoreUnavailableError, float]:
    """Await `call`, require StoreUnavailableError; return it and the seconds the call took
    on the event loop's clock (the one memsdk's deadlines run on)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(StoreUnavailableError) as raised:
        await call
    return raised.value, loop.time() - started


# ---------------------------------------------------------------------------- pass


async def test_pass_counts_every_call_exactly(
    make_client: ClientFactory, proxy: FaultProxy
) -> None:
    """Two identical runs, each on a fresh client and session, cost the same requests."""
    runs: list[tuple[FaultCounts, FaultCounts]] = []
    for _ in range(2):
        mem = await make_client(l1_max_bytes=0)
        sid = new_session()
        await mem.append_turns(sid, TURNS, customer_id="C1")
        after_append = proxy.counts
        proxy.reset_counts()
        ctx = await mem.load_context(sid, customer_id="C1")
        after_load = proxy.counts
        assert [t.content for t in ctx.turns] == [t.content for t in TURNS]
        assert not ctx.degraded
        runs.append((after_append, after_load))
    for counts in (c for run in runs for c in run):
        assert_consistent(counts)
        assert counts.requests_total >= 1
        assert counts.by_outcome["forwarded"] == counts.requests_total
        assert counts.upstream_failures == 0
    (append_1, load_1), (append_2, load_2) = runs
    assert append_1.by_operation == append_2.by_operation
    assert load_1.by_operation == load_2.by_operation
    print(f"append on a new session: {append_1.by_operation}; load: {load_1.by_operation}")


async def test_keep_alive_connection_carries_many_requests(
    make_client: ClientFactory, proxy: FaultProxy
) -> None:
    """Sequential calls reuse the pool's connections through the proxy: 21 requests, <= 2."""
    mem = await make_client(l1_max_bytes=0)
    sid = new_session()
    await mem.append_turns(sid, TURNS)
    for _ in range(10):
        await mem.load_context(sid)
    counts = proxy.counts
    assert counts.requests_total == 21
    # load_context sends GetItem and Query at once, so the pool may hold two connections.
    assert counts.connections_total <= 2


# ---------------------------------------------------------------------------- error replies


@pytest.mark.parametrize(
    ("mode", "status"), [("http5xx", 500), ("http5xx", 503), ("throttle", 500)]
)
async def test_error_replies_cost_exactly_max_attempts(
    make_client: ClientFactory, proxy: FaultProxy, mode: FaultMode, status: int
) -> None:
    """Each failing call is one request plus one retry with store_max_attempts=2."""
    mem = await make_client(store_max_attempts=2)
    sid = new_session()
    proxy.set_mode(mode, status=status)
    for _ in range(3):
        await expect_unavailable(mem.append_turns(sid, TURNS))
    counts = proxy.counts
    assert_consistent(counts)
    assert counts.requests_total == 6
    assert counts.by_outcome[mode] == 6
    # Reads degrade rather than raise: an answer from this process's cache, flagged.
    proxy.reset_counts()
    ctx = await mem.load_context(sid)
    assert ctx.degraded
    assert ctx.turns == []
    # load_context sends GetItem and Query at once, each tried twice; once Query has failed
    # for good, a GetItem still waiting out its backoff is cancelled before its retry.
    by_operation = proxy.counts.by_operation
    assert by_operation["Query"] == 2
    assert by_operation["GetItem"] in (1, 2)
    # Back to pass: the same client (same pooled connection: replies kept it alive) works.
    proxy.set_mode("pass")
    await mem.append_turns(sid, TURNS)
    assert proxy.counts.connections_total == 1


async def test_no_foreign_exception_reaches_the_caller(
    make_client: ClientFactory, proxy: FaultProxy
) -> None:
    """Under every request fault, appends raise memsdk errors only and reads never raise."""
    mem = await make_client(read_timeout=0.3, write_timeout=0.5)
    sid = new_session()
    modes: list[FaultMode] = ["http5xx", "throttle", "reset", "blackhole", "down"]
    for mode in modes:
        proxy.set_mode(mode)
        with contextlib.suppress(MemsdkError):
            await mem.append_turns(sid, TURNS)
        ctx = await mem.load_context(sid)
        assert ctx.degraded, mode
    proxy.set_mode("pass")


# ---------------------------------------------------------------------------- broken transport


async def test_reset_fails_fast(make_client: ClientFactory, proxy: FaultProxy) -> None:
    """A TCP RST on every request: StoreUnavailableError at once, not at the deadline."""
    mem = await make_client(store_max_attempts=2)
    proxy.set_mode("reset")
    error, _ = await expect_unavailable(mem.append_turns(new_session(), TURNS))
    # Ended by the resets: neither by its 10 s deadline nor by a read timeout.
    assert "no complete response" in str(error) and "Timeout" not in str(error), error
    counts = proxy.counts
    assert_consistent(counts)
    assert counts.by_outcome["reset"] == counts.requests_total == 2
    assert counts.connections_total == 2  # a reset connection is never reused


async def test_blackhole_is_bounded_by_the_read_timeout(
    make_client: ClientFactory, proxy: FaultProxy
) -> None:
    """A request that is never answered: load_context degrades after read_timeout."""
    sid = new_session()
    # Set up through a client with SLOW_OK deadlines: a stall must not fail the setup.
    await (await make_client()).append_turns(sid, TURNS)
    mem = await make_client(read_timeout=0.3, write_timeout=0.3)
    proxy.set_mode("blackhole")
    proxy.reset_counts()
    loop = asyncio.get_running_loop()
    started = loop.time()
    ctx = await mem.load_context(sid)
    elapsed = loop.time() - started
    assert ctx.degraded
    assert elapsed < 0.3 + STALL_S
    assert proxy.counts.by_outcome["blackhole"] >= 1
    error, elapsed = await expect_unavailable(mem.append_turns(sid, TURNS))
    assert "exceeded write_timeout=0.3s" in str(error), error  # its own deadline ended it
    assert elapsed < 0.3 + STALL_S


async def test_latency_against_the_read_timeout(
    make_client: ClientFactory, proxy: FaultProxy
) -> None:
    """0.5 s per request: a 0.2 s read deadline degrades, a generous one waits and succeeds."""
    impatient = await make_client(read_timeout=0.2, l1_max_bytes=0)
    patient = await make_client(l1_max_bytes=0)
    sid = new_session()
    await patient.append_turns(sid, TURNS)
    proxy.set_mode("latency", delay_s=0.5)
    assert (await impatient.load_context(sid)).degraded
    started = time.monotonic()
    ctx = await patient.load_context(sid)
    assert time.monotonic() - started >= 0.5
    assert not ctx.degraded
    assert len(ctx.turns) == 2


async def test_down_refuses_then_recovers_on_the_same_port(
    make_client: ClientFactory, proxy: FaultProxy
) -> None:
    """An outage is "connection refused"; afterwards the same client reconnects."""
    mem = await make_client(store_max_attempts=2)
    sid = new_session()
    await mem.append_turns(sid, TURNS)
    endpoint = proxy.endpoint
    proxy.set_mode("down")
    host, port = endpoint.removeprefix("http://").split(":")
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(host, int(port))
    error, _ = await expect_unavailable(mem.append_turns(sid, TURNS))
    # Refused at once: neither its 10 s deadline nor a connect timeout ended it.
    assert "cannot connect" in str(error) and "Timeout" not in str(error), error
    assert (await mem.load_context(sid)).degraded
    proxy.set_mode("pass")
    assert proxy.endpoint == endpoint
    await mem.append_turns(sid, TURNS)
    ctx = await mem.load_context(sid)
    assert not ctx.degraded
    assert len(ctx.turns) == 4


# ---------------------------------------------------------------------------- probability


async def test_ten_percent_throttling_is_absorbed_by_retries(
    make_client: ClientFactory, proxy: FaultProxy
) -> None:
    """p=0.1 throttling over 300 reads: a binomial share throttled, every read answered."""
    mem = await make_client(store_max_attempts=3, l1_max_bytes=0)
    sid = new_session()
    await mem.append_turns(sid, TURNS)
    proxy.set_mode("pass", probability=0.1, fault="throttle")
    proxy.reset_counts()
    for _ in range(300):
        ctx = await mem.load_context(sid)
        assert not ctx.degraded
        assert len(ctx.turns) == 2
    counts = proxy.counts
    assert_consistent(counts)
    n, throttled = counts.requests_total, counts.by_outcome["throttle"]
    # Mean 0.1 n, sd ~ sqrt(0.09 n) (~7 for n ~ 600): +-5 sd is loose yet catches p = 0.
    sd = (0.09 * n) ** 0.5
    assert 0.1 * n - 5 * sd <= throttled <= 0.1 * n + 5 * sd
    # Each read needs exactly one answered GetItem and one answered Query.
    assert counts.by_outcome["forwarded"] == 600
    print(f"p=0.1: {throttled} of {n} requests throttled, operations {counts.by_operation}")


async def test_lost_reply_applies_the_write_and_hides_the_answer(
    make_client: ClientFactory, proxy: FaultProxy, proxied_url: str
) -> None:
    """The append lands in DynamoDB Local, yet the caller hears of a possible failure."""
    mem = await make_client(store_max_attempts=1, l1_max_bytes=0)
    sid = new_session()
    proxy.set_mode("lost_reply")
    with pytest.raises(StoreUnavailableError) as info:
        await mem.append_turns(sid, TURNS, customer_id="C1")
    assert info.value.maybe_applied is True
    counts = proxy.counts
    assert_consistent(counts)
    assert counts.by_outcome["lost_reply"] == counts.requests_total >= 1
    proxy.set_mode("pass")
    async with MemoryClient(Config(store=proxied_url, **SLOW_OK)) as reader:
        ctx = await reader.load_context(sid, customer_id="C1")
    assert [t.content for t in ctx.turns] == [t.content for t in TURNS]


async def test_a_mode_for_n_requests_then_pass(
    make_client: ClientFactory, proxy: FaultProxy
) -> None:
    """`requests=2`: exactly two requests are throttled, then everything passes."""
    mem = await make_client(l1_max_bytes=0, store_max_attempts=3)
    sid = new_session()
    await mem.append_turns(sid, TURNS)
    proxy.set_mode("throttle", requests=2)
    proxy.reset_counts()
    for _ in range(3):
        assert not (await mem.load_context(sid)).degraded
    counts = proxy.counts
    assert counts.by_outcome["throttle"] == 2
    assert counts.by_outcome["forwarded"] == counts.requests_total - 2


async def test_capacity_throttles_what_exceeds_the_rate(
    make_client: ClientFactory, proxy: FaultProxy
) -> None:
    """A bucket of 5 requests/s: a burst of 60 reads' requests finds it empty after ~5.

    Slow enough that a stall of seconds in the middle of the burst refills too little to
    let it all through."""
    mem = await make_client(l1_max_bytes=0, store_max_attempts=1)
    sid = new_session()
    await mem.append_turns(sid, TURNS)
    started = time.monotonic()  # the proxy's clock, read before the bucket starts filling
    proxy.set_mode("pass", capacity_per_s=5.0)
    proxy.reset_counts()
    answers = await asyncio.gather(*(mem.load_context(sid) for _ in range(30)))
    elapsed = time.monotonic() - started
    counts = proxy.counts
    assert_consistent(counts)
    # 60 requests (GetItem + Query each) against 5 tokens plus what refills meanwhile.
    allowed = 5 + 5 * elapsed
    assert counts.by_outcome["forwarded"] <= allowed + 1, (counts, elapsed)
    assert counts.by_outcome["throttle"] >= counts.requests_total - allowed - 1
    assert counts.by_outcome["throttle"] > 0
    # A throttled read is answered degraded, never raised.
    assert any(ctx.degraded for ctx in answers)


# ---------------------------------------------------------------------------- raw HTTP


async def raw_call(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    headers: str = "Content-Length: 2\r\n",
    body: bytes = b"{}",
) -> tuple[int, bytes]:
    """One ListTables request on an open connection; its (status, body)."""
    writer.write(
        (
            "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/x-amz-json-1.0\r\n"
            "X-Amz-Target: DynamoDB_20120810.ListTables\r\n"
            "Authorization: AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/dynamodb/"
            "aws4_request, SignedHeaders=host, Signature=0\r\n"
            f"X-Amz-Date: 20240101T000000Z\r\n{headers}\r\n"
        ).encode()
        + body
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length: *(\d+)", head)
    assert length is not None
    return int(head.split()[1]), await reader.readexactly(int(length[1]))


async def test_mode_switch_applies_to_the_next_request_on_a_live_connection(
    proxy: FaultProxy,
) -> None:
    """One keep-alive connection: pass, throttle, 5xx, pass, each on the very next request."""
    host, port = proxy.endpoint.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        assert (await raw_call(reader, writer))[0] == 200
        proxy.set_mode("throttle")
        status, body = await raw_call(reader, writer)
        assert (status, b"#ThrottlingException" in body) == (400, True)
        proxy.set_mode("http5xx", status=503)
        status, body = await raw_call(reader, writer)
        assert (status, b"#InternalServerError" in body) == (503, True)
        proxy.set_mode("pass")
        assert (await raw_call(reader, writer))[0] == 200
    finally:
        writer.close()
    counts = proxy.counts
    assert (counts.connections_total, counts.requests_total) == (1, 4)
    assert counts.by_outcome["forwarded"] == 2


async def test_chunked_request_is_rejected_clearly(proxy: FaultProxy) -> None:
    """A chunked request body gets a 400 that says why, and is never forwarded."""
    host, port = proxy.endpoint.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        status, body = await raw_call(
            reader, writer, headers="Transfer-Encoding: chunked\r\n", body=b"2\r\n{}\r\n0\r\n\r\n"
        )
    finally:
        writer.close()
    assert status == 400
    assert b"chunked" in body
    assert proxy.counts.by_outcome == {**proxy.counts.by_outcome, "rejected": 1, "forwarded": 0}


async def test_chunked_reply_is_relayed_verbatim() -> None:
    """An upstream that answers in chunks (DynamoDB Local does not, others may) is relayed."""
    reply = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\n"
        b'Transfer-Encoding: chunked\r\n\r\n6\r\n{"a":1\r\n1\r\n}\r\n0\r\n\r\n'
    )

    async def upstream_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                await reader.readexactly(int(length[1]) if length else 0)
                writer.write(reply)
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    upstream = await asyncio.start_server(upstream_handler, "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]
    try:
        async with FaultProxy(upstream=f"http://127.0.0.1:{port}") as proxy:
            host, proxy_port = proxy.endpoint.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(proxy_port))
            try:
                for _ in range(2):  # twice: the framing kept both connections in step
                    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
                    assert await reader.readexactly(len(reply)) == reply
            finally:
                writer.close()
            assert proxy.counts.requests_total == 2
    finally:
        upstream.close()
        await upstream.wait_closed()


async def test_aclose_ends_held_connections_and_is_idempotent(proxy: FaultProxy) -> None:
    """A blackholed client is released by aclose(); a second aclose() is a no-op."""
    proxy.set_mode("blackhole")
    host, port = proxy.endpoint.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), timeout=0.3)  # no answer, ever
        assert proxy.counts.by_outcome["blackhole"] == 1
        # Deadlines only to turn a held connection (a hang) into a failure: no stall nears them.
        await asyncio.wait_for(proxy.aclose(), timeout=30.0)
        await proxy.aclose()
        with contextlib.suppress(ConnectionResetError):  # a RST is as good as a FIN here
            assert await asyncio.wait_for(reader.read(), timeout=30.0) == b""
    finally:
        writer.close()


async def test_set_mode_rejects_nonsense(proxy: FaultProxy) -> None:
    """Bad arguments fail loudly and leave the current mode alone."""
    bad: list[dict[str, Any]] = [
        {"mode": "slow"},
        {"mode": "http5xx", "status": 404},
        {"mode": "latency", "delay_s": -1.0},
        {"mode": "pass", "probability": 1.5, "fault": "throttle"},
        {"mode": "pass", "probability": 0.5, "fault": "down"},
        {"mode": "pass", "capacity_per_s": 0.0},
        {"mode": "pass", "capacity_per_s": -5.0},
        {"mode": "throttle", "requests": 0},
        {"mode": "down", "requests": 2},
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            proxy.set_mode(**kwargs)
    with pytest.raises(ValueError, match="http://"):
        FaultProxy(upstream="https://127.0.0.1:8000")
