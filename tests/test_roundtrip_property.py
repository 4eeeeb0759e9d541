"""The property itself: every drawn case round-trips bit for bit, or fails with a known torch bug."""

import pytest
from hypothesis import given

from shardfuzz.campaign import label
from shardfuzz.strategies import cases

pytestmark = pytest.mark.ranks


@given(case=cases())
def test_save_then_load_reproduces_the_saved_state(shardfuzz_pool, shardfuzz_known, case):
    label(case)
    verdict = shardfuzz_pool.run(case)
    if verdict.ok:
        return
    known = shardfuzz_known(verdict.signature())
    if known is not None:
        return  # a recorded torch bug; the corpus replay tests check it still fails
    raise AssertionError(f"{verdict.summary()}\nsignature: {verdict.signature()}")
