"""The state machine of tests/property/machine.py on each store (docs/guarantees.md)."""

from __future__ import annotations

import pytest
from hypothesis.stateful import run_state_machine_as_test

from tests.property.conftest import profile_settings
from tests.property.harness import Env
from tests.property.machine import MemoryMachine


def test_machine_sqlite(sqlite_env: Env) -> None:
    """SQLite store, FaultyStore outages and lost replies, real Redis, crashes, TTL."""

    class SQLiteMachine(MemoryMachine):
        env = sqlite_env

    run_state_machine_as_test(SQLiteMachine, settings=profile_settings("machine_sqlite"))


@pytest.mark.dynamodb
def test_machine_dynamodb(dynamodb_env: Env) -> None:
    """DynamoDB Local behind the fault proxy (refused, 503), real Redis, crashes, TTL."""

    class DynamoDBMachine(MemoryMachine):
        env = dynamodb_env

    run_state_machine_as_test(DynamoDBMachine, settings=profile_settings("machine_dynamodb"))
