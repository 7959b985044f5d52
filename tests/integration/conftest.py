"""Fixtures for integration tests against DynamoDB Local (no mocks)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from memsdk.config import DynamoDBStoreSpec
from memsdk.faultproxy import FaultProxy
from tests.conftest import new_dynamodb_table
from tests.harness.dynamodb_local import DynamoDBLocal, create_test_table


@pytest.fixture(scope="session")
def ddb_local(dynamodb_local: DynamoDBLocal) -> DynamoDBLocal:
    """The session's DynamoDB Local (fake AWS credentials set): tests/conftest.py starts it.

    An alias rather than a second server, so that one JVM serves the whole run.
    """
    return dynamodb_local


@pytest.fixture
async def ddb_spec(ddb_local: DynamoDBLocal) -> DynamoDBStoreSpec:
    """A fresh, uniquely named table (created by memsdk's create_table) for one test."""
    return await create_test_table(ddb_local.endpoint, f"memsdk-test-{uuid.uuid4().hex[:12]}")


@pytest.fixture
async def proxy(
    dynamodb_local: DynamoDBLocal, request: pytest.FixtureRequest
) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the session's DynamoDB Local, seeded (a test module may set
    FAULT_PROXY_SEED), so its probabilistic faults repeat run after run."""
    seed = getattr(request.module, "FAULT_PROXY_SEED", 84)
    async with FaultProxy(upstream=dynamodb_local.endpoint, seed=seed) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def proxied_url(dynamodb_local: DynamoDBLocal, proxy: FaultProxy) -> str:
    """A fresh table (created directly, not through the proxy), reached through the proxy."""
    url = new_dynamodb_table(dynamodb_local)
    return url.replace(f"endpoint={dynamodb_local.endpoint}", f"endpoint={proxy.endpoint}")
