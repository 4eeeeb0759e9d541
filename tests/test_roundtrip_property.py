"""The property itself: every drawn case round-trips bit for bit, or fails with a known torch bug.

The seed tests' scenarios (``strategies/seeds.py``) run as explicit examples of
the property, and once more each as a test of its own, named after the scenario.
"""

import pytest
from hypothesis import example, given, settings

from shardfuzz.search.campaign import label
from shardfuzz.strategies import cases
from shardfuzz.strategies.seeds import SEED_SCENARIOS

pytestmark = pytest.mark.ranks

#: Drawn cases of the default tier's run of the property; the slow tier draws the profile's number.
QUICK_EXAMPLES = 20


def _check(pool, known, case):
    verdict = pool.run(case)
    if not verdict.is_failure:
        return verdict  # a pass, or a combination torch documents as unsupported
    if known(verdict.signature(), case) is not None:
        return verdict  # a recorded torch bug; the corpus replay tests check it still fails
    raise AssertionError(f"{verdict.summary()}\nsignature: {verdict.signature()}")


def _seed_examples(test):
    for name, case in reversed(SEED_SCENARIOS.items()):
        test = example(case=case).via(f"seed scenario {name}")(test)
    return test


@pytest.mark.slow
@given(case=cases())
@_seed_examples
def test_save_then_load_reproduces_the_saved_state(shardfuzz_pool, shardfuzz_known, case):
    """The property at the profile's size (ci: 200 cases, about 80 s on 2 cores): the slow tier."""
    label(case)
    _check(shardfuzz_pool, shardfuzz_known, case)


@settings(max_examples=QUICK_EXAMPLES)
@given(case=cases())
@_seed_examples
def test_save_then_load_reproduces_the_saved_state_quickly(shardfuzz_pool, shardfuzz_known, case):
    """The same property on fewer drawn cases (and every seed scenario), for the default tier."""
    label(case)
    _check(shardfuzz_pool, shardfuzz_known, case)


@pytest.mark.parametrize("name", list(SEED_SCENARIOS))
def test_seed_scenario(shardfuzz_pool, shardfuzz_known, name):
    case = SEED_SCENARIOS[name]
    if case.world_size > shardfuzz_pool.world_size:
        pytest.skip(f"needs {case.world_size} ranks; the session pool has {shardfuzz_pool.world_size}")
    verdict = _check(shardfuzz_pool, shardfuzz_known, case)
    assert verdict.status != "unsupported", f"a seed scenario must run here: {verdict.detail}"
