"""Input fuzzing (docs/guarantees.md, inputs): every input is stored exactly or refused clearly.

Session ids, Unicode text (lone surrogates included), nested and non-JSON attributes, and
turn sizes around the item limit, on SQLite and on DynamoDB Local, through a synchronous
client and a buffered (WAL) one. A refusal is the documented error, raised before any
I/O, and leaves the session as it was; anything accepted reads back identical. DynamoDB
Local is the oracle for the size limit: a turn memsdk accepts must be one DynamoDB stores.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from memsdk import Config, MemoryClient, Turn, errors
from memsdk.limits import DYNAMODB_ITEM_LIMIT
from memsdk.testing import CountingStore
from memsdk.wiring import build_store
from tests.conftest import TEST_TIMEOUTS, new_dynamodb_table
from tests.property.conftest import profile_settings

# The largest cap Config allows: the estimator must keep it under DynamoDB's 400 KB.
MAX_TURN_BYTES = DYNAMODB_ITEM_LIMIT - 8_192
_VALID_SID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_ids = itertools.count()


@dataclass
class Clients:
    loop: asyncio.AbstractEventLoop
    sync: MemoryClient
    buffered: MemoryClient
    counting: CountingStore  # the synchronous client's store, to prove "before any I/O"

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def client(self, buffered: bool) -> MemoryClient:
        return self.buffered if buffered else self.sync


@pytest.fixture(params=["sqlite", pytest.param("dynamodb", marks=pytest.mark.dynamodb)])
def clients(request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop) -> Iterator[Clients]:
    with tempfile.TemporaryDirectory(prefix="memsdk-fuzz-") as tmp:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp}/fuzz.db"
        else:
            url = new_dynamodb_table(request.getfixturevalue("dynamodb_local"))
        base = {"store": url, "max_turn_bytes": MAX_TURN_BYTES, **TEST_TIMEOUTS}
        counting = CountingStore(build_store(Config(**base)))
        sync = MemoryClient(Config(**base), store=counting)
        buffered = MemoryClient(Config(**base, wal_dir=f"{tmp}/wal"))
        loop.run_until_complete(sync.open())
        loop.run_until_complete(buffered.open())
        try:
            yield Clients(loop, sync, buffered, counting)
        finally:
            loop.run_until_complete(buffered.aclose())
            loop.run_until_complete(sync.aclose())


# ------------------------------------------------------------------- the oracles


def json_round_trips(value: object, depth: int = 0) -> bool:
    """Would `value` come back identical from JSON (the documented rule, written anew)."""
    if depth > 32:
        return False
    if value is None or isinstance(value, bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return is_unicode(value)
    if isinstance(value, list):
        return all(json_round_trips(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(
            isinstance(k, str) and is_unicode(k) and json_round_trips(v, depth + 1)
            for k, v in value.items()
        )
    return False


def is_unicode(text: str) -> bool:
    return not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


# ------------------------------------------------------------------ strategies

# Any code point, and a lone surrogate (not encodable as UTF-8) in about one text in four.
_chars = st.text(st.characters(exclude_categories=()), max_size=30)
any_text = st.tuples(_chars, st.sampled_from(["", "", "", "\ud800", "\udfff"]), _chars).map("".join)
json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats()  # NaN and infinities: refused
    | any_text
)
non_json_leaf = st.sampled_from(
    [(1, 2), {1, 2}, b"bytes", object(), 1j, float("nan"), float("-inf"), range(3)]
)
attribute_values = st.recursive(
    json_leaf | non_json_leaf,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(any_text | st.integers(0, 3), children, max_size=3)
    ),
    max_leaves=10,
)


def deep(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": "é"}
    for _ in range(depth):
        value = {"d": value}
    return value


# ------------------------------------------------------------------------ tests


@given(
    sid=st.from_regex(_VALID_SID, fullmatch=True)
    | st.text(st.characters(exclude_categories=()), max_size=140)
    | st.sampled_from(["", "a" * 129, "../etc", "a/b", "{tag}", "a\x00b", "ä", "a b", " a"]),
    buffered=st.booleans(),
)
@profile_settings("fuzz")
def test_session_ids_are_used_exactly_or_refused_before_io(
    clients: Clients, sid: str, buffered: bool
) -> None:
    valid = _VALID_SID.fullmatch(sid) is not None
    event(f"session id valid: {valid}")
    mem = clients.client(buffered)
    calls = sum(clients.counting.calls.values())
    if not valid:
        for call in (
            mem.load_context(sid),
            mem.append_turn(sid, Turn(role="user", content="x")),
            mem.update_meta(sid, page_context={}),
            mem.delete_session(sid),
        ):
            with pytest.raises(errors.InvalidSessionIdError):
                clients.run(call)
        assert sum(clients.counting.calls.values()) == calls, "I/O for an invalid session id"
        return
    unique = f"{sid[:100]}.{next(_ids)}"  # examples may repeat an id: keep them apart
    receipt = clients.run(mem.append_turn(unique, Turn(role="user", content=unique)))
    clients.run(mem.flush(timeout=30))
    ctx = clients.run(clients.sync.load_context(unique))
    assert [(t.turn_id, t.content) for t in ctx.turns] == [(receipt.turn_ids[0], unique)]
    assert ctx.meta is not None and ctx.meta.session_id == unique


@given(
    content=any_text,
    intent=st.none() | any_text,
    attributes=st.dictionaries(any_text | st.integers(0, 2), attribute_values, max_size=4)
    | st.integers(30, 34).map(lambda d: {"deep": deep(d)}),
    role=st.sampled_from(["user", "assistant", "system", "tool", "robot", ""]),
    buffered=st.booleans(),
)
@profile_settings("fuzz")
def test_turns_round_trip_exactly_or_are_refused_before_io(
    clients: Clients,
    content: str,
    intent: str | None,
    attributes: dict[Any, Any],
    role: str,
    buffered: bool,
) -> None:
    sid = f"fuzz-turn-{next(_ids)}"
    mem = clients.client(buffered)
    valid = (
        role in ("user", "assistant", "system", "tool")
        and is_unicode(content)
        and (intent is None or is_unicode(intent))
        and json_round_trips(attributes)
    )
    event(f"turn valid: {valid}")
    anchor = clients.run(mem.append_turn(sid, Turn(role="user", content="anchor")))
    calls = sum(clients.counting.calls.values())
    turn = Turn(role=role, content=content, intent=intent, attributes=attributes)  # type: ignore[arg-type]
    try:
        receipt = clients.run(mem.append_turn(sid, turn))
    except errors.InvalidTurnError:
        assert not valid, "a valid turn was refused"
        if not buffered:
            assert sum(clients.counting.calls.values()) == calls, "I/O before the refusal"
        receipt = None
    else:
        assert valid, "an invalid turn was accepted"
    clients.run(mem.flush(timeout=30))
    ctx = clients.run(clients.sync.load_context(sid))
    assert ctx.meta is not None
    if receipt is None:  # the session is exactly as before the refused call
        assert [t.turn_id for t in ctx.turns] == anchor.turn_ids and ctx.meta.turn_count == 1
        return
    got = ctx.turns[-1]
    assert got.turn_id == receipt.turn_ids[0] and ctx.meta.turn_count == 2
    assert (got.role, got.content, got.intent, got.attributes) == (
        role,
        content,
        intent,
        attributes,
    )


@given(
    page_context=st.dictionaries(any_text | st.integers(0, 2), attribute_values, max_size=4),
    buffered=st.booleans(),
)
@profile_settings("fuzz")
def test_meta_fields_round_trip_exactly_or_are_refused(
    clients: Clients, page_context: dict[Any, Any], buffered: bool
) -> None:
    sid = f"fuzz-meta-{next(_ids)}"
    mem = clients.client(buffered)
    clients.run(mem.update_meta(sid, page_context={"before": 1}, attributes={"a": 1}))
    valid = json_round_trips(page_context)
    try:
        clients.run(mem.update_meta(sid, page_context=page_context))
    except errors.InvalidTurnError:
        assert not valid
        page_context = {"before": 1}
    else:
        assert valid
    ctx = clients.run(clients.sync.load_context(sid))
    assert ctx.meta is not None
    assert ctx.meta.page_context == page_context and ctx.meta.attributes == {"a": 1}


@given(
    # Content sizes around the cap, in characters of 1 to 4 UTF-8 bytes.
    char=st.sampled_from(["a", "é", "日", "🎉"]),
    target=st.integers(MAX_TURN_BYTES - 2_000, DYNAMODB_ITEM_LIMIT + 2_000),
    attributes_bytes=st.sampled_from([0, 100, 5_000]),
    buffered=st.booleans(),
)
@profile_settings("fuzz", max_examples=max(10, profile_settings("fuzz").max_examples // 4))
def test_sizes_around_the_item_limit(
    clients: Clients, char: str, target: int, attributes_bytes: int, buffered: bool
) -> None:
    sid = f"fuzz-size-{next(_ids)}"
    mem = clients.client(buffered)
    width = len(char.encode())
    content = char * ((target - attributes_bytes) // width)
    attributes = {"pad": "x" * attributes_bytes} if attributes_bytes else {}
    raw = len(content.encode()) + attributes_bytes
    calls = sum(clients.counting.calls.values())
    try:
        turn = Turn(role="assistant", content=content, attributes=attributes)
        receipt = clients.run(mem.append_turn(sid, turn))
    except errors.TurnTooLargeError:
        event("refused as too large")
        # Refusing a turn whose payload alone is well under the cap would be a bug too.
        assert raw > MAX_TURN_BYTES - 1_024, f"refused a {raw}-byte turn"
        if not buffered:
            assert sum(clients.counting.calls.values()) == calls, "I/O before the refusal"
        assert clients.run(clients.sync.load_context(sid)).meta is None
        return
    event("accepted")
    assert raw <= MAX_TURN_BYTES, f"accepted a {raw}-byte turn over the cap"
    clients.run(mem.flush(timeout=30))  # the store (DynamoDB: its 400 KB limit) took it
    ctx = clients.run(clients.sync.load_context(sid, last_n=1))
    assert ctx.meta is not None and ctx.meta.turn_count == 1
    (got,) = ctx.turns
    assert (got.turn_id, got.content, got.attributes) == (receipt.turn_ids[0], content, attributes)
