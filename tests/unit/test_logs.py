"""RateLimitedLog: one line per key per interval, and the next one counts what was dropped."""

from __future__ import annotations

import logging

import pytest

from memsdk.logs import RateLimitedLog


def test_one_line_per_key_per_interval_and_a_count_of_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    log = RateLimitedLog(logging.getLogger("memsdk.test"), interval_s=10.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="memsdk.test")
    assert log.log(logging.WARNING, "a", "store down: %s", "x", extra={"k": 1})
    for _ in range(500):  # an outage: every call wants to say so
        assert not log.log(logging.WARNING, "a", "store down: %s", "x")
    assert log.log(logging.WARNING, "b", "other kind")  # keys are independent
    now[0] += 10.0
    assert log.log(logging.WARNING, "a", "store down: %s", "y")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["store down: x", "other kind", "store down: y (500 similar suppressed)"]
    assert [getattr(r, "suppressed", None) for r in caplog.records] == [0, 0, 500]
    assert caplog.records[0].k == 1  # type: ignore[attr-defined]
