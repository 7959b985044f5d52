"""Turn ids: format, order, uniqueness, the hybrid logical clock under skew."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from memsdk.ids import TurnIdGenerator, is_turn_id, turn_id_ms


def test_format_and_order_within_one_millisecond() -> None:
    gen = TurnIdGenerator(lambda: 1_700_000_000_000, node="0000abcd")
    ids = gen.next_ids(3)
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert all(is_turn_id(i) and turn_id_ms(i) == 1_700_000_000_000 for i in ids)
    assert ids[0] == "17000000000000000" + "0000abcd"


def test_never_goes_backwards_when_the_clock_does() -> None:
    now = [1_700_000_000_500]
    gen = TurnIdGenerator(lambda: now[0])
    first = gen.next_ids(1)[0]
    now[0] -= 10_000
    assert gen.next_ids(1)[0] > first


def test_after_bound_from_a_faster_clock() -> None:
    slow = TurnIdGenerator(lambda: 1_000_000_000_000, node="ffffffff")
    fast_id = "2000000000000" + "0005" + "00000000"
    nxt = slow.next_ids(2, after=fast_id)
    assert all(i > fast_id for i in nxt) and nxt[0] < nxt[1]


def test_logical_overflow_moves_to_next_millisecond() -> None:
    gen = TurnIdGenerator(lambda: 1_000, node="00000001")
    ids = gen.next_ids(0x10002)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert turn_id_ms(ids[-1]) == 1_001


def test_two_generators_same_millisecond_never_collide() -> None:
    a = TurnIdGenerator(lambda: 5_000_000_000_000)
    b = TurnIdGenerator(lambda: 5_000_000_000_000)
    assert not set(a.next_ids(100)) & set(b.next_ids(100))


@settings(deadline=None)  # a stall of the shared machine is not a slow example
@given(
    clocks=st.lists(st.integers(0, 9_000_000_000_000), min_size=1, max_size=30),
    afters=st.lists(st.none() | st.integers(0, 9_000_000_000_000), min_size=1, max_size=30),
)
def test_strictly_increasing_under_any_clock_and_bounds(
    clocks: list[int], afters: list[int | None]
) -> None:
    it = iter(clocks * 2)
    gen = TurnIdGenerator(lambda: next(it, clocks[-1]))
    issued: list[str] = []
    for bound in afters:
        after = None if bound is None else f"{bound:013d}ffff00000000"
        new = gen.next_ids(1, after=after)[0]
        assert after is None or new > after
        assert not issued or new > issued[-1]
        issued.append(new)
