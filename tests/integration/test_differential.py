"""Differential test: the lean data path against the aioboto3 reference, on DynamoDB Local.

Hypothesis generates a sequence of operations; each runs on a client with the lean path
(table A) and a client with the aioboto3 path (table B), at the same fake time. Returned
contexts, raised errors and the raw stored items (read with boto3, bypassing memsdk) must
be identical, up to the random parts every writer draws for itself (the node suffix of turn
ids and the version stamp of a new incarnation).
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import boto3
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memsdk import Config, MemoryClient, Turn, errors
from memsdk.testing import FakeClock
from tests.conftest import TEST_TIMEOUTS, new_dynamodb_table
from tests.harness.dynamodb_local import REGION, DynamoDBLocal

pytestmark = pytest.mark.dynamodb

_NODE = re.compile(r"(\d{13}[0-9a-f]{4})[0-9a-f]{8}")
_example = itertools.count()

turns_st = st.lists(
    st.builds(
        Turn,
        role=st.sampled_from(["user", "assistant", "tool", "system"]),
        content=st.text(max_size=60),
        intent=st.none() | st.sampled_from(["product_discovery", "support"]),
        attributes=st.dictionaries(
            st.text(max_size=8),
            st.none() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
            max_size=3,
        ),
    ),
    min_size=1,
    max_size=4,
)
op_st = st.one_of(
    st.tuples(st.just("append"), st.integers(0, 2), turns_st, st.sampled_from([None, "C1", "C2"])),
    st.tuples(st.just("load"), st.integers(0, 2), st.integers(1, 6), st.sampled_from([None, "C1"])),
    st.tuples(
        st.just("meta"), st.integers(0, 2), st.dictionaries(st.text(max_size=5), st.integers())
    ),
    st.tuples(st.just("summary"), st.integers(0, 2), st.integers(0, 10), st.text(max_size=30)),
    st.tuples(st.just("delete"), st.integers(0, 2)),
    st.tuples(st.just("advance"), st.sampled_from([1, 30, 3_601])),
)


def normalize(value: Any) -> Any:
    """Builtins with every turn id's node suffix masked and version stamps dropped."""
    if isinstance(value, str):
        return _NODE.sub(r"\1xxxxxxxx", value)
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items() if k != "version"}
    if isinstance(value, list | tuple):
        return [normalize(v) for v in value]
    return value


def raw_items(endpoint: str, url: str, prefix: str) -> list[Any]:
    table = url.split("://", 1)[1].split("?", 1)[0]
    client = boto3.client("dynamodb", endpoint_url=endpoint, region_name=REGION)
    try:
        items: list[Any] = []
        for page in client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
            items += [i for i in page["Items"] if i["PK"]["S"].startswith(f"SESSION#{prefix}")]
    finally:
        client.close()
    return sorted(normalize(items), key=lambda i: (i["PK"]["S"], i["SK"]["S"]))


async def run(mem: MemoryClient, op: tuple[Any, ...], sid: str, ids: list[str]) -> Any:
    kind = op[0]
    if kind == "append":
        receipt = await mem.append_turns(sid, op[2], customer_id=op[3])
        ids.extend(receipt.turn_ids)
        return receipt
    if kind == "load":
        return await mem.load_context(sid, last_n=op[2], customer_id=op[3])
    if kind == "meta":
        return await mem.update_meta(sid, attributes=op[2])
    if kind == "summary":
        through = ids[op[2] % len(ids)] if ids else "0" * 25
        return await mem.put_summary(sid, op[3], through_turn_id=through)
    if kind == "delete":
        await mem.delete_session(sid)
        return None
    raise AssertionError(kind)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(op_st, min_size=1, max_size=12))
async def test_lean_and_aioboto3_paths_agree(
    dynamodb_local: DynamoDBLocal, ops: list[tuple[Any, ...]]
) -> None:
    url_a = new_dynamodb_table(dynamodb_local)
    url_b = new_dynamodb_table(dynamodb_local)
    clock = FakeClock()
    lean = MemoryClient(
        Config(store=url_a, dynamodb_data_path="lean", **TEST_TIMEOUTS), clock=clock
    )
    ref = MemoryClient(
        Config(store=url_b, dynamodb_data_path="aioboto3", **TEST_TIMEOUTS), clock=clock
    )
    prefix = f"d{next(_example)}-"
    ids: dict[str, tuple[list[str], list[str]]] = {}
    async with lean, ref:
        for op in ops:
            if op[0] == "advance":
                clock.advance(op[1])
                continue
            sid = f"{prefix}{op[1]}"
            lean_ids, ref_ids = ids.setdefault(sid, ([], []))
            outcomes = []
            for mem, known in ((lean, lean_ids), (ref, ref_ids)):
                try:
                    outcomes.append(("ok", msgspec.to_builtins(await run(mem, op, sid, known))))
                except errors.MemsdkError as exc:
                    outcomes.append(("error", type(exc).__name__))
            assert normalize(outcomes[0]) == normalize(outcomes[1]), op
    assert raw_items(dynamodb_local.endpoint, url_a, prefix) == raw_items(
        dynamodb_local.endpoint, url_b, prefix
    )
