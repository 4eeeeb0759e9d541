"""A pool a side size (``executor.per_side``): a whole-pool target's sides of two sizes run on two warm pools, the
save half on one and the load half on the other, and the oracles still judge the load against the save."""

from __future__ import annotations

import attrs
from hypothesis import Phase, given, settings

from shardfuzz.case import FSDP2, Adam, Case, Linear, Loop, Model, Sequential, Side
from shardfuzz.executor import RankPool, pool_for
from shardfuzz.executor.admission import admit
from shardfuzz.executor.per_side import PerSidePools
from shardfuzz.strategies import cases
from shardfuzz.targets import support_for

PER_SIDE = "object_targets:Fsdp2ShardedPerSide"
CASE = Case(
    model=Model(2, Sequential([Linear(3), Linear(2)])),
    save=Side(FSDP2(), (2,), state_dict="sharded"),
    load=Side(FSDP2(), (1,), state_dict="sharded"),
    optimizer=Adam(),
    steps=1,
)


def test_a_target_that_takes_a_pool_a_side_gets_per_side_pools_and_others_a_rank_pool():
    assert isinstance(pool_for(2, target=PER_SIDE), PerSidePools)
    assert isinstance(pool_for(2, target="object_targets:Fsdp2ShardedOnly"), RankPool)
    assert isinstance(pool_for(2), RankPool)


def test_a_whole_pool_side_narrower_than_a_rank_pool_is_refused_but_admitted_per_side():
    refused = admit(CASE, world_size=2, target=PER_SIDE)
    assert refused is not None and "whole_pool" in refused.detail
    assert admit(CASE, world_size=2, target=PER_SIDE, per_side=True) is None


def test_a_second_round_trip_across_two_sizes_is_refused_per_side():
    case = attrs.evolve(CASE, loop=Loop(resumes=2))
    refused = admit(case, world_size=2, target=PER_SIDE, per_side=True)
    assert refused is not None and "second round-trip" in refused.detail


def test_sides_of_every_size_are_drawn_for_a_target_with_per_side_pools():
    sizes = set()

    @settings(max_examples=40, phases=[Phase.generate], database=None)
    @given(cases(max_world_size=3, support=support_for(PER_SIDE)))
    def draw(case):
        sizes.add((case.save.world_size, case.load.world_size))

    draw()
    assert any(save != load for save, load in sizes), sizes


def test_a_checkpoint_saved_on_two_ranks_loads_on_a_pool_of_one():
    with pool_for(2, target=PER_SIDE) as pools:
        verdict = pools.run(CASE)
        assert verdict.status == "pass", verdict.summary()
        assert sorted(pools.pools) == [1, 2]
        assert pools.run(attrs.evolve(CASE, load=CASE.save)).status == "pass"  # one size: whole on its pool


def test_a_fault_in_the_load_half_on_the_other_pool_is_caught():
    with pool_for(2, target=f"{PER_SIDE}+PerturbLoadedParameter") as pools:
        verdict = pools.run(CASE)
    assert verdict.status == "mismatch", verdict.summary()
    assert verdict.mismatches[0].oracle == "complete-state"
