"""FSDP1's LOCAL_STATE_DICT: exact on the same topology; on another one exact or a loud refusal."""

import pytest

from shardfuzz.case import FSDP1, SGD, Adam, Block, Case, LayerNorm, Linear, Model, Sequential, Side
from shardfuzz.executor import RankPool

pytestmark = pytest.mark.ranks

MODEL = Model(3, Sequential([Linear(5), Block([Linear(2), LayerNorm()]), Linear(3)]))


def _local(n: int, *, wrap=("1",), use_orig_params=False) -> Side:
    return Side(FSDP1(use_orig_params=use_orig_params), (n,), wrap=wrap, state_dict="local")


def _case(save: Side, load: Side, **kw) -> Case:
    return Case(model=MODEL, save=save, load=load, optimizer=Adam(), steps=2, **kw)


def test_the_same_topology_round_trips_exactly_and_trains_on_alike(shardfuzz_pool):
    case = _case(_local(2), _local(2), checks=["continuation"])
    assert not case.local_may_refuse
    verdict = shardfuzz_pool.run(case)
    assert verdict.ok, verdict.summary()


def test_another_topology_may_refuse_loudly(shardfuzz_pool):
    """Torch unpads the flat shards so that another rank count could load; on 2.13 the load
    raises instead (a view modified in place), and another wrap set raises a size mismatch.
    Either is the allowed outcome: not a finding, and the ranks agree on it (no hang)."""
    for load in (_local(3), _local(2, wrap=())):
        case = _case(_local(2), load)
        assert case.local_may_refuse
        verdict = shardfuzz_pool.run(case)
        assert verdict.ok, verdict.summary()


def test_a_wrong_local_load_is_caught_on_the_same_topology():
    with RankPool(2, target="shardfuzz.targets.mutants:PerturbOneLoadedElement") as pool:
        verdict = pool.run(_case(_local(2), _local(2)))
    assert verdict.status == "mismatch" and verdict.mismatches[0].key.startswith("model."), verdict.summary()


def test_a_refusal_on_the_same_topology_is_a_finding(shardfuzz_pool):
    """use_orig_params=True: the local state dict holds each rank's views of the original
    parameters as plain tensors, which DCP takes for replicated ones (corpus entry)."""
    verdict = shardfuzz_pool.run(
        Case(model=MODEL, save=_local(2, use_orig_params=True), load=_local(2, use_orig_params=True), optimizer=SGD())
    )
    assert verdict.status == "error" and "Size mismatch" in verdict.summary(), verdict.summary()
