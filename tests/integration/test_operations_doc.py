"""docs/operations.md's IAM policies against the DynamoDB calls memsdk really sends.

Every public call, and `create-table`, goes through memsdk.faultproxy in pass mode, which
records the operation of every request. The IAM actions those operations need must be
exactly the ones the runbook grants: a call memsdk starts sending fails this test until the
runbook grants it, and a grant that nothing uses fails it too. The CloudFormation and
Terraform snippets must grant the same runtime actions and describe the same table.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

from memsdk import Config, MemoryClient, Turn
from memsdk.config import DynamoDBStoreSpec
from memsdk.faultproxy import FaultProxy
from memsdk.store.dynamodb_aioboto3 import create_table
from tests.conftest import new_dynamodb_table
from tests.harness.dynamodb_local import DynamoDBLocal

RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "operations.md"

# The IAM action each DynamoDB API call needs. IAM has no TransactWriteItems action: each
# Put of a transaction is authorized as dynamodb:PutItem (memsdk's transactions hold Puts only).
IAM_ACTION = {
    "GetItem": "dynamodb:GetItem",
    "Query": "dynamodb:Query",
    "PutItem": "dynamodb:PutItem",
    "TransactWriteItems": "dynamodb:PutItem",
    "DeleteItem": "dynamodb:DeleteItem",
    "BatchWriteItem": "dynamodb:BatchWriteItem",
    "CreateTable": "dynamodb:CreateTable",
    "DescribeTable": "dynamodb:DescribeTable",
    "DescribeTimeToLive": "dynamodb:DescribeTimeToLive",
    "UpdateTimeToLive": "dynamodb:UpdateTimeToLive",
}
TURNS = [
    Turn(role="user", content="Show me horror manga"),
    Turn(role="assistant", content="Here are 3 horror manga..."),
]
SLOW_OK = {"read_timeout": 10.0, "write_timeout": 10.0}


def _code_blocks(language: str) -> list[str]:
    text = RUNBOOK.read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def _json_policy(sid: str) -> set[str]:
    """The actions of the JSON policy statement `sid` in the runbook."""
    for block in _code_blocks("json"):
        for statement in json.loads(block)["Statement"]:
            if statement["Sid"] == sid:
                assert statement["Effect"] == "Allow"
                assert ":table/" in statement["Resource"], "scoped to one table's ARN"
                return set(statement["Action"])
    raise AssertionError(f"no JSON policy statement {sid!r} in {RUNBOOK.name}")


def _actions(operations: dict[str, int]) -> set[str]:
    unknown = set(operations) - set(IAM_ACTION)
    assert not unknown, f"memsdk sent {unknown}: add them to IAM_ACTION and to the runbook"
    return {IAM_ACTION[op] for op, count in operations.items() if count}


def test_infrastructure_snippets_match_the_runtime_policy_and_create_table() -> None:
    runtime = _json_policy("MemsdkRuntime")
    (cloudformation,) = _code_blocks("yaml")
    (terraform,) = _code_blocks("hcl")
    for snippet in (cloudformation, terraform):
        assert set(re.findall(r"dynamodb:\w+", snippet)) == runtime
    # What memsdk create-table creates (memsdk/store/dynamodb_aioboto3.py): string PK/SK,
    # on-demand, TTL on expires_at, no index.
    for needle in (
        "AttributeName: PK\n          KeyType: HASH",
        "AttributeName: SK\n          KeyType: RANGE",
        "AttributeName: PK\n          AttributeType: S",
        "AttributeName: SK\n          AttributeType: S",
        "BillingMode: PAY_PER_REQUEST",
        "TimeToLiveSpecification:\n        AttributeName: expires_at\n        Enabled: true",
    ):
        assert needle in cloudformation
    for needle in (
        'billing_mode = "PAY_PER_REQUEST"',
        'hash_key     = "PK"',
        'range_key    = "SK"',
        'name = "PK"\n    type = "S"',
        'name = "SK"\n    type = "S"',
        'attribute_name = "expires_at"\n    enabled        = true',
    ):
        assert needle in terraform
    for snippet in (cloudformation, terraform):
        assert "SecondaryIndex" not in snippet and "secondary_index" not in snippet


@pytest.mark.dynamodb
async def test_create_table_needs_exactly_the_provisioning_policy(
    dynamodb_local: DynamoDBLocal,
) -> None:
    async with FaultProxy(upstream=dynamodb_local.endpoint) as proxy:
        spec = DynamoDBStoreSpec(
            table=f"memsdk-ops-{uuid.uuid4().hex[:12]}", region="us-east-1", endpoint=proxy.endpoint
        )
        assert await create_table(spec) is True
        assert await create_table(spec) is False  # the idempotent second run
        sent = _actions(proxy.counts.by_operation)
    assert sent == _json_policy("MemsdkCreateTable")


@pytest.mark.dynamodb
@pytest.mark.parametrize("data_path", ["lean", "aioboto3"])
async def test_every_public_call_needs_exactly_the_runtime_policy(
    dynamodb_local: DynamoDBLocal, tmp_path: Path, data_path: str
) -> None:
    async with FaultProxy(upstream=dynamodb_local.endpoint) as proxy:
        url = new_dynamodb_table(dynamodb_local).replace(
            f"endpoint={dynamodb_local.endpoint}", f"endpoint={proxy.endpoint}"
        )
        base = {"store": url, "dynamodb_data_path": data_path, **SLOW_OK}
        proxy.reset_counts()
        async with (
            MemoryClient(Config(**base)) as mem,
            MemoryClient(Config(**base, consistency="strong")) as other,
        ):
            sid = f"ops-{uuid.uuid4().hex[:8]}"
            await mem.load_context(sid, customer_id="C1")
            receipt = await mem.append_turns(sid, TURNS, customer_id="C1")
            await other.append_turns(sid, TURNS, customer_id="C1")  # mem's hint is now stale
            await mem.append_turns(sid, TURNS, customer_id="C1")
            await mem.update_meta(sid, page_context={"asin": "B08X1YRSTR"}, customer_id="C1")
            await mem.put_summary(sid, "likes horror", through_turn_id=receipt.turn_ids[-1])
            await other.load_context(sid, customer_id="C1", expect_existing=True)
            await mem.delete_session(sid, customer_id="C1")
        async with MemoryClient(Config(**base, wal_dir=str(tmp_path / "wal"))) as buffered:
            sid = f"ops-{uuid.uuid4().hex[:8]}"
            await buffered.append_turns(sid, TURNS, customer_id="C2")
            await buffered.flush(timeout=10)
            await buffered.load_context(sid, customer_id="C2")
        sent = _actions(proxy.counts.by_operation)
    assert sent == _json_policy("MemsdkRuntime")
