"""Measured case deadlines: seconds for a hang once the pool knows its case times, the generic one until then."""

import pytest

from shardfuzz.executor.deadlines import MeasuredDeadlines


def test_generic_until_warm_then_a_multiple_of_the_slowest_recent_case_with_a_floor():
    deadlines = MeasuredDeadlines(floor=10, factor=4, warmup=3, cold=0)
    assert deadlines.deadline(45.0) == 45.0
    for seconds in (0.5, 1.0, 4.0):
        deadlines.record(seconds)
    assert deadlines.deadline(45.0) == 16.0  # 4 x the slowest
    assert deadlines.deadline(12.0) == 12.0  # never above the generic deadline
    fast = MeasuredDeadlines(floor=10, factor=4, warmup=1, cold=0)
    fast.record(0.1)
    assert fast.deadline(45.0) == 10.0  # the floor


def test_the_first_cases_after_a_start_of_the_ranks_keep_the_generic_deadline():
    deadlines = MeasuredDeadlines(warmup=1, cold=2)
    for _ in range(5):
        deadlines.record(1.0)
    assert deadlines.deadline(30.0) == 10.0
    deadlines.started()
    assert deadlines.deadline(30.0) == 30.0
    deadlines.record(1.0)
    deadlines.record(1.0)
    assert deadlines.deadline(30.0) == 10.0


def test_the_window_forgets_old_slow_cases():
    deadlines = MeasuredDeadlines(floor=1, factor=2, window=2, warmup=1, cold=0)
    for seconds in (9.0, 1.0, 1.0):
        deadlines.record(seconds)
    assert deadlines.deadline(30.0) == 2.0


@pytest.mark.parametrize("kwargs", [{"floor": 0}, {"factor": 0.5}, {"window": 0}, {"warmup": 0}, {"cold": -1}])
def test_bad_settings_are_named(kwargs):
    with pytest.raises(ValueError, match="MeasuredDeadlines"):
        MeasuredDeadlines(**kwargs)
