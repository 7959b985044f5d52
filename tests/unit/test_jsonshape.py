"""The depth rule every tier applies to values it reads (memsdk.jsonshape)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from memsdk.jsonshape import MAX_DEPTH, too_few_brackets_to_nest, within_depth

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet="ab{[]}", max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3)
    ),
    max_leaves=60,
)


def depth_of(value: Any) -> int:
    """The reference: levels of containers, 0 for a scalar."""
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


@given(json_values, st.integers(min_value=0, max_value=6))
def test_within_depth_agrees_with_the_reference(value: Any, limit: int) -> None:
    assert within_depth(value, limit) == (depth_of(value) <= limit + 1)


@given(json_values)
def test_the_bracket_count_only_ever_spares_a_walk_that_would_pass(value: Any) -> None:
    text = json.dumps(value)
    if too_few_brackets_to_nest(text):
        assert within_depth(value)
    assert too_few_brackets_to_nest(text) == too_few_brackets_to_nest(text.encode())


def test_a_chain_one_past_the_limit_is_refused_and_counted_as_nesting() -> None:
    value: Any = 0
    for _ in range(MAX_DEPTH + 2):
        value = [value]
    assert not within_depth(value)
    assert not too_few_brackets_to_nest(json.dumps(value))
    assert within_depth(value[0])  # one level less is what memsdk accepts


def test_any_depth_is_safe_to_ask_about() -> None:
    value: Any = {}
    for _ in range(200_000):
        value = {"a": value}
    assert not within_depth(value)
