"""Shared fixtures: DynamoDB Local for the whole run, a fresh table or file per test."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from memsdk import Config, MemoryClient
from memsdk.testing import FakeClock
from tests.harness.dynamodb_local import DynamoDBLocal, aws_test_env, create_test_table
from tests.harness.redis_server import RedisServer
from tests.otel import InMemoryOtel

# The contract suite checks behaviour, not speed: generous deadlines keep a cold JVM and a
# noisy shared machine from turning into false failures. For the same reason a slow call
# (an emulator on 2 busy cores) does not count against the circuit breaker here; the
# breaker's slow-call rule is tested on its own (tests/unit, tests/chaos).
TEST_TIMEOUTS = {"read_timeout": 15.0, "write_timeout": 15.0, "breaker_slow_call": 15.0}


@pytest.fixture(scope="session")
def dynamodb_local() -> Iterator[DynamoDBLocal]:
    """One DynamoDB Local process for the whole test run, with fake AWS credentials."""
    saved = {k: os.environ.get(k) for k in aws_test_env()}
    os.environ.update(aws_test_env())
    server = DynamoDBLocal()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def new_dynamodb_table(server: DynamoDBLocal) -> str:
    """Create a fresh, empty table on DynamoDB Local and return its store URL."""
    name = f"memsdk-test-{uuid.uuid4().hex[:12]}"
    # Sync fixtures cannot await; run memsdk's own create_table on a private loop.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, create_test_table(server.endpoint, name)).result()
    return f"dynamodb://{name}?region=us-east-1&endpoint={server.endpoint}"


@pytest.fixture
def dynamodb_url(dynamodb_local: DynamoDBLocal) -> str:
    """A store URL naming a fresh, empty table on DynamoDB Local."""
    return new_dynamodb_table(dynamodb_local)


@pytest.fixture(params=["sqlite", "dynamodb-lean", "dynamodb-aioboto3"])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Every store and data path memsdk ships, each on a fresh file or table, as Config kwargs.

    The contract suite runs on all of them: one behaviour, whichever store answers.
    """
    if request.param == "sqlite":
        return {"store": f"sqlite:///{tmp_path / 'memory.db'}"}
    url = new_dynamodb_table(request.getfixturevalue("dynamodb_local"))
    return {"store": url, "dynamodb_data_path": request.param.removeprefix("dynamodb-")}


@pytest.fixture
def store_url(store_settings: dict[str, Any]) -> str:
    """The store URL of this test's store."""
    url: str = store_settings["store"]
    return url


@pytest.fixture
def clock() -> FakeClock:
    """A fake wall clock starting at the real time."""
    return FakeClock()


ClientFactory = Callable[..., Awaitable[MemoryClient]]


@pytest.fixture
async def make_client(
    store_settings: dict[str, Any], clock: FakeClock
) -> AsyncIterator[ClientFactory]:
    """Open MemoryClients on the test's store (own clock or config overrides allowed)."""
    clients: list[MemoryClient] = []

    async def factory(*, clock_: Any = None, store: Any = None, **overrides: Any) -> MemoryClient:
        settings: dict[str, Any] = {**store_settings, **TEST_TIMEOUTS, **overrides}
        client = MemoryClient(Config(**settings), clock=clock_ or clock, store=store)
        await client.open()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.aclose()


@pytest.fixture
async def mem(make_client: ClientFactory) -> MemoryClient:
    """An open client on the test's store with the fake clock."""
    return await make_client()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server on a free loopback port, for one test."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def otel() -> Iterator[InMemoryOtel]:
    """An in-memory OpenTelemetry SDK (spans and metrics) to hand to MemoryClient."""
    kit = InMemoryOtel()
    yield kit
    kit.shutdown()
