"""Fixtures for integration tests against DynamoDB Local (no mocks)."""

from __future__ import annotations

import uuid

import pytest

from memsdk.config import DynamoDBStoreSpec
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
