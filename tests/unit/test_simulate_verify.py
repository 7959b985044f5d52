"""The verification pass judges a session's read-back against the ledger, turn by turn."""

from __future__ import annotations

from memsdk.models import Turn
from memsdk.simulate.verify import Ledger, SessionLedger, Verification, _check_session
from memsdk.simulate.workload import REF_KEY

SID = "s-1"


def turn(ref: str, content: str | None = None, turn_id: str | None = None) -> Turn:
    return Turn(
        role="user",
        content=content if content is not None else f"text of {ref}",
        attributes={REF_KEY: f"{SID}#{ref}"},
        turn_id=turn_id or f"id-{ref}",
    )


def sent(ledger: Ledger, entry: SessionLedger, refs: list[str], outcome: str) -> list[Turn]:
    turns = [turn(r) for r in refs]
    if outcome == "acked":
        ledger.acked(entry, turns, [f"id-{r}" for r in refs], durable=True)
    else:
        ledger.failed(entry, turns, maybe_applied=outcome == "ambiguous")
    return turns


def judge(stored: list[Turn], plan: list[tuple[list[str], str]]) -> Verification:
    ledger = Ledger()
    entry = ledger.session(SID, "C1")
    for refs, outcome in plan:
        sent(ledger, entry, refs, outcome)
    result = Verification()
    _check_session(entry, stored, result)
    return result


PLAN = [(["0.0", "0.1"], "acked"), (["1.0", "1.1"], "refused"), (["2.0", "2.1"], "acked")]


def test_an_intact_session_passes() -> None:
    v = judge([turn("0.0"), turn("0.1"), turn("2.0"), turn("2.1")], PLAN)
    assert (v.acknowledged, v.refused, v.refused_landed, v.violations) == (4, 2, 0, 0)
    assert v.ok and v.problems == []


def test_missing_duplicated_out_of_order_changed_unexpected() -> None:
    v = judge([turn("0.0"), turn("0.1"), turn("2.1")], PLAN)
    assert (v.missing, v.violations) == (1, 1)
    assert v.problems == [f"{SID}: acknowledged turn id-2.0 is missing"]

    # A second copy under another id (a retry that wrote twice) is a duplicate too.
    copy = turn("0.1", turn_id="id-other")
    v = judge([turn("0.0"), turn("0.1"), copy, turn("2.0"), turn("2.1")], PLAN)
    assert (v.duplicated, v.violations) == (1, 1)

    v = judge([turn("0.0"), turn("2.0"), turn("0.1"), turn("2.1")], PLAN)
    assert v.out_of_order == 1 and not v.ok

    v = judge([turn("0.0"), turn("0.1", content="edited"), turn("2.0"), turn("2.1")], PLAN)
    assert (v.changed, v.violations) == (1, 1)
    assert "edited" not in " ".join(v.problems)  # problems name ids, never content

    stranger = Turn(role="user", content="x", turn_id="id-x", attributes={REF_KEY: "s-2#0.0"})
    untagged = Turn(role="user", content="y", turn_id="id-y")
    v = judge([turn("0.0"), turn("0.1"), stranger, untagged, turn("2.0"), turn("2.1")], PLAN)
    assert (v.unexpected, v.violations) == (2, 2)


def test_a_refused_append_must_be_absent() -> None:
    v = judge([turn("0.0"), turn("0.1"), turn("1.0"), turn("2.0"), turn("2.1")], PLAN)
    assert (v.refused_landed, v.violations) == (1, 1)


def test_an_ambiguous_append_is_absent_or_whole_and_once() -> None:
    plan = [(["0.0"], "acked"), (["1.0", "1.1"], "ambiguous"), (["2.0"], "acked")]
    v = judge([turn("0.0"), turn("2.0")], plan)
    assert (v.ambiguous, v.ambiguous_absent, v.violations) == (2, 2, 0)
    v = judge([turn("0.0"), turn("1.0"), turn("1.1"), turn("2.0")], plan)
    assert (v.ambiguous_landed, v.violations) == (2, 0)
    v = judge([turn("0.0"), turn("1.0"), turn("2.0")], plan)  # half of an atomic append
    assert (v.ambiguous_broken, v.violations) == (2, 2)
    twice = [
        turn("0.0"),
        turn("1.0"),
        turn("1.1"),
        turn("1.0", turn_id="b"),
        turn("1.1", turn_id="c"),
    ]
    v = judge([*twice, turn("2.0")], plan)
    assert v.ambiguous_broken == 2


def test_ledger_counts_and_read_expectations() -> None:
    ledger = Ledger()
    entry = ledger.session(SID, "C1")
    sent(ledger, entry, ["0.0", "0.1"], "acked")
    assert entry.last_acked == "id-0.1" and not entry.unsettled
    sent(ledger, entry, ["1.0"], "ambiguous")
    assert entry.unsettled  # the newest turn is now unknown
    sent(ledger, entry, ["2.0"], "refused")
    assert entry.unsettled
    sent(ledger, entry, ["3.0"], "acked")
    assert entry.last_acked == "id-3.0" and not entry.unsettled
    assert ledger.session(SID, "other") is entry
    assert dict(ledger.counts) == {
        "acked_turns": 3,
        "acked_turns_durable": 3,
        "ambiguous_turns": 1,
        "ambiguous_appends": 1,
        "refused_turns": 1,
        "refused_appends": 1,
    }
    assert entry.turns_sent() == 5


def test_nothing_acknowledged_is_not_ok() -> None:
    v = judge([], [(["0.0"], "refused")])
    assert v.violations == 0 and not v.ok
