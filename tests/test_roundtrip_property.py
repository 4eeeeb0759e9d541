"""The property itself: every drawn case round-trips bit for bit, or fails with a known torch bug.

The seed tests' scenarios (``strategies/seeds.py``) run as explicit examples of
the property, and once more each as a test of its own, named after the scenario.
"""

import pytest
from hypothesis import example, given

from shardfuzz.campaign import label
from shardfuzz.strategies import cases
from shardfuzz.strategies.seeds import SEED_SCENARIOS

pytestmark = pytest.mark.ranks


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


@given(case=cases())
@_seed_examples
def test_save_then_load_reproduces_the_saved_state(shardfuzz_pool, shardfuzz_known, case):
    label(case)
    _check(shardfuzz_pool, shardfuzz_known, case)


@pytest.mark.parametrize("name", list(SEED_SCENARIOS))
def test_seed_scenario(shardfuzz_pool, shardfuzz_known, name):
    case = SEED_SCENARIOS[name]
    if case.world_size > shardfuzz_pool.world_size:
        pytest.skip(f"needs {case.world_size} ranks; the session pool has {shardfuzz_pool.world_size}")
    verdict = _check(shardfuzz_pool, shardfuzz_known, case)
    assert verdict.status != "unsupported", f"a seed scenario must run here: {verdict.detail}"
