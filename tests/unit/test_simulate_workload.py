"""The seeded workload model: repeatable, and shaped like the seed's traffic (docs/simulate.md)."""

from __future__ import annotations

import statistics

import msgspec
import pytest

from memsdk import session as rules
from memsdk.models import Turn
from memsdk.simulate.workload import (
    HISTORY_BATCH_TURNS,
    REF_KEY,
    SlotScript,
    WorkloadShape,
    power_slots,
)

SHAPE = WorkloadShape(sessions=20)


def messages(seed: int, slots: int = 6, per_slot: int = 500) -> list[list[Turn]]:
    out = []
    for slot in range(slots):
        script = SlotScript(seed, slot, SHAPE)
        out += [script.message(f"s{slot}", n) for n in range(per_slot)]
    return out


def encoded(turn: Turn) -> int:
    return len(msgspec.json.encode(turn))


def test_same_seed_same_workload_other_seed_other_workload() -> None:
    def trace(seed: int) -> bytes:
        script = SlotScript(seed, 3, SHAPE)
        plan = script.next_session()
        parts: list[object] = [plan, script.first_delay()]
        for n in range(40):
            parts += [script.message("s", n), script.pause()]
        return msgspec.json.encode(parts)

    assert trace(7) == trace(7)
    assert trace(7) != trace(8)
    # Slots are independent streams: slot 3 does not depend on what slot 2 drew.
    assert SlotScript(7, 2, SHAPE).message("s", 0) != SlotScript(7, 3, SHAPE).message("s", 0)


def test_turn_sizes_follow_the_seed() -> None:
    msgs = messages(seed=11)
    replies = [m[1] for m in msgs]
    plain = [t for t in replies if t.role == "assistant" and not t.attributes.keys() - {REF_KEY}]
    cards = [t for t in replies if "cards" in t.attributes]
    tools = [m for m in msgs if len(m) == 4]
    # ~0.8 KB of text; ~2 KB with product cards (content + attributes, as encoded).
    assert 650 <= statistics.median(len(t.content) for t in plain) <= 950
    assert 1_600 <= statistics.median(encoded(t) for t in cards) <= 2_600
    # Shares: 10% tool exchanges, 35% cards, the rest plain text.
    assert 0.07 <= len(tools) / len(msgs) <= 0.13
    assert 0.30 <= len(cards) / len(msgs) <= 0.40
    users = [m[0] for m in msgs]
    assert {t.role for t in users} == {"user"} and all(t.intent for t in users)
    assert 150 <= statistics.median(len(t.content) for t in users) <= 350


def test_tool_exchanges_and_rare_large_outputs() -> None:
    msgs = messages(seed=5, slots=10, per_slot=600)
    tools = [m for m in msgs if len(m) == 4]
    for user, call, result, answer in tools:
        assert [user.role, call.role, result.role, answer.role] == [
            "user",
            "assistant",
            "tool",
            "assistant",
        ]
        assert result.attributes["tool_call_id"] == call.attributes["tool_call"]["id"]
    outputs = [m[2] for m in tools]
    large = [t for t in outputs if len(t.content) >= 20_000]
    # Rare (0.5% of messages), tens to hundreds of KB, always below max_turn_bytes.
    assert 0 < len(large) <= 0.02 * len(msgs)
    assert max(len(t.content) for t in large) >= 60_000
    assert all(len(t.content) <= 0.8 * SHAPE.max_turn_bytes for t in outputs)
    # Every turn is valid for memsdk as it is, large ones included (checked on the encoding).
    for m in tools:
        rules.validate_turns("s-1", m, SHAPE.max_turn_bytes)


def test_large_outputs_follow_a_smaller_max_turn_bytes() -> None:
    shape = WorkloadShape(sessions=2, max_turn_bytes=40_000)
    script = SlotScript(5, 0, shape)
    for n in range(3_000):
        rules.validate_turns("s-1", script.message("s-1", n), shape.max_turn_bytes)


def test_every_turn_carries_a_unique_reference() -> None:
    msgs = messages(seed=3, slots=2, per_slot=200)
    refs = [t.attributes[REF_KEY] for m in msgs for t in m]
    assert len(refs) == len(set(refs))
    assert refs[0] == "s0#0.0" and refs[1] == "s0#0.1"


def test_power_users_and_conversation_lengths() -> None:
    assert power_slots(WorkloadShape(sessions=50)) == 2  # 5% of 50, rounded
    assert power_slots(WorkloadShape(sessions=10)) == 1  # at least one
    assert power_slots(WorkloadShape(sessions=1)) == 0
    assert power_slots(WorkloadShape(sessions=50, power_share=0)) == 0
    shape = WorkloadShape(sessions=100, power_turns=(200, 2_000))
    histories = []
    for slot in range(power_slots(shape)):
        script = SlotScript(9, slot, shape)
        first = script.next_session()
        assert first.power and 200 <= first.history_turns <= 2_000
        # The whole session stays readable in one window by the verifier (<= 10,000 turns).
        assert first.history_turns + 4 * first.messages <= 9_000
        later = script.next_session()
        assert later.power and later.history_turns == 0
        histories.append(first.history_turns)
    assert len(set(histories)) > 1
    regular = SlotScript(9, 50, shape)
    lengths = [regular.next_session().messages for _ in range(300)]
    assert min(lengths) == 3 and max(lengths) == 10  # 6-20 turns per conversation


def test_history_is_written_in_batches_of_valid_turns() -> None:
    script = SlotScript(1, 0, SHAPE)
    batches = script.history("s-p", 237)
    assert [len(b) for b in batches] == [HISTORY_BATCH_TURNS] * 4 + [37]
    turns = [t for b in batches for t in b]
    assert [t.role for t in turns[:4]] == ["user", "assistant", "user", "assistant"]
    assert turns[-1].attributes[REF_KEY] == "s-p#h236"
    for batch in batches:
        rules.validate_turns("s-p", batch, SHAPE.max_turn_bytes)


def test_bursts_at_about_three_per_second_then_think() -> None:
    script = SlotScript(2, 1, WorkloadShape(sessions=2, burst_rate=3.0, think_s=1.0))
    script.next_session()
    pauses = [script.pause() for _ in range(3_000)]
    # Within a burst: 1/3 s +-50%. Bursts of 1-5 messages (3 on average), then a think
    # time (exponential, mean 1 s, clipped to [0.1, 5]): one pause in three.
    assert 0.45 <= statistics.mean(pauses) <= 0.65
    assert 0.15 <= sum(p > 0.5 for p in pauses) / len(pauses) <= 0.3
    assert min(pauses) >= 0.1 and max(pauses) <= 5.0


@pytest.mark.parametrize(
    "bad",
    [
        {"sessions": 0},
        {"burst_rate": 0},
        {"think_s": -1},
        {"power_share": 1.5},
        {"power_turns": (1, 10)},
        {"power_turns": (100, 50)},
    ],
)
def test_shape_is_validated(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        WorkloadShape(**bad)  # type: ignore[arg-type]
