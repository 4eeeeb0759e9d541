"""The training-loop patterns (``Case.loop``): a held state dict, a second round-trip, a lenient load.

Each pattern is data on the case (validated, JSON, shrunk, described), runs on the ranks, and has a mutant that
only it exposes: the mutant passes a plain case and is killed, by the oracle made for it, once the pattern is on.
"""

import attrs
import pytest

from shardfuzz.case import (
    DDP,
    FSDP1,
    FSDP2,
    Adam,
    Case,
    Dcp,
    Linear,
    Loop,
    Model,
    Sequential,
    Side,
    Unsharded,
    dimensions,
)
from shardfuzz.case.serial import from_dict, to_dict
from shardfuzz.executor import RankPool
from shardfuzz.findings.describe import describe
from shardfuzz.search.neighbours import neighbours
from shardfuzz.search.shrink import simpler_cases
from shardfuzz.unsupported import excluded

BASE = Case(
    model=Model(4, Sequential([Linear(5), Linear(3)])),
    save=Side(FSDP2(), (2,)),
    load=Side(FSDP2(), (2,)),
    optimizer=Adam(),
    steps=2,
)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Loop(load_held=True), "needs resumes 2"),
        (lambda: Loop(resumes=3), "resumes"),
        (lambda: attrs.evolve(BASE, load_mutation="wider", loop=Loop(lenient=True)), "load_mutation None"),
        (lambda: attrs.evolve(BASE, checks=("continuation",), loop=Loop(lenient=True)), "continuation"),
        (lambda: attrs.evolve(BASE, loop=Loop(lenient=True, resumes=2)), "no lenient load"),
        (lambda: attrs.evolve(BASE, ignore_frozen_params=True, loop=Loop(resumes=2)), "ignore_frozen_params"),
        (
            lambda: attrs.evolve(
                BASE,
                save=Side(FSDP1(use_orig_params=False), (2,), state_dict="local"),
                load=Side(FSDP1(use_orig_params=False), (2,), state_dict="local"),
                loop=Loop(save_held=True),
            ),
            "held state dict is DSD's",
        ),
    ],
)
def test_a_loop_the_data_model_cannot_run_is_refused_with_its_reason(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_the_default_loop_stays_out_of_the_json_and_a_set_field_round_trips_alone():
    assert "loop" not in to_dict(BASE)
    case = attrs.evolve(BASE, loop=Loop(resumes=2, load_held=True))
    assert to_dict(case)["loop"] == {"load_held": True, "resumes": 2}
    assert from_dict(to_dict(case)) == case


@pytest.mark.parametrize(
    "side, copies",
    [
        (Side(FSDP2(), (2,)), False),
        (Side(DDP(), (2,), state_dict="full"), False),  # measured: DDP's full state dict is its parameters too
        (Side(FSDP2(), (2,), state_dict="full"), True),
        (Side(FSDP1(), (2,)), True),
        (Side(FSDP2(), (2,), cpu_offload=True), True),
    ],
)
def test_a_held_state_dict_is_drawn_only_where_it_is_the_parameters(side, copies):
    case = attrs.evolve(BASE, save=side, loop=Loop(save_held=True))
    rule = excluded(case)
    assert (rule is not None and rule.name == "held-state-dict-is-a-copy") == copies


def test_each_loop_field_is_shrunk_away_described_and_a_neighbour():
    case = attrs.evolve(BASE, loop=Loop(save_held=True, resumes=2, load_held=True))
    loops = {c.loop for c in simpler_cases(case) if c.loop != case.loop}
    assert Loop(save_held=True) in loops and Loop(save_held=True, resumes=2) in loops
    assert Loop(resumes=2, load_held=True) in loops
    gradless = attrs.evolve(BASE, loop=Loop(gradless="always", empty_group=True))
    simpler = {c.loop for c in simpler_cases(gradless)}
    assert simpler >= {Loop(empty_group=True), Loop(gradless="first-step", empty_group=True), Loop(gradless="always")}
    assert "without gradients (always)" in describe(gradless) and "empty param group" in describe(gradless)
    assert from_dict(to_dict(gradless)) == gradless
    assert to_dict(gradless)["loop"] == {"gradless": "always", "empty_group": True}
    assert "held from build" in describe(case) and "2 round-trips" in describe(case)
    turned = {dimension for dimension, _, neighbour in neighbours(case) if neighbour is not None}
    assert {"save_held_state_dict", "load_held_state_dict", "resumes", "gradless_params"} <= turned
    plain = {dimension for dimension, _, neighbour in neighbours(BASE) if neighbour is not None}
    assert {"save_held_state_dict", "resumes", "lenient_load"} <= plain  # a lenient load and two round-trips exclude
    offset = attrs.evolve(BASE, loop=Loop(ranks_from=2))
    assert {c.loop for c in simpler_cases(offset)} >= {Loop(), Loop(ranks_from=1)}
    assert "from global rank 2" in describe(offset) and offset.world_size == 4
    assert to_dict(offset)["loop"] == {"ranks_from": 2} and from_dict(to_dict(offset)) == offset
    assert "group_without_rank0" in plain and dimensions(offset)["group_without_rank0"] == "true"


@pytest.mark.ranks
def test_the_loop_patterns_run_on_the_ranks_and_pass_where_torch_keeps_its_promises():
    cases = [
        attrs.evolve(BASE, loop=Loop(save_held=True)),
        attrs.evolve(BASE, load=Side(DDP(), (2,)), loop=Loop(resumes=2)),
        attrs.evolve(BASE, loop=Loop(resumes=2, load_held=True)),  # FSDP2: set_state_dict renames no key
        attrs.evolve(BASE, load=Side(Unsharded(), (1,)), loop=Loop(lenient=True)),
        attrs.evolve(BASE, load=Side(DDP(), (2,)), loop=Loop(lenient=True), flatten_optimizer_state_dict=False),
        # groups without global rank 0: FSDP2, DDP, HSDP and an async save on ranks 1..
        attrs.evolve(BASE, load=Side(DDP(), (3,)), loop=Loop(ranks_from=1)),
        attrs.evolve(BASE, save=Side(FSDP2(), (1, 2)), load=Side(FSDP1(), (1,)), loop=Loop(ranks_from=2)),
        attrs.evolve(BASE, storage=Dcp(api="async"), checks=("continuation",), loop=Loop(ranks_from=1, resumes=2)),
        # a param group added after the load: judged by continuation and by the second round-trip, in both forms
        attrs.evolve(BASE, load=Side(DDP(), (3,)), checks=("continuation",), loop=Loop(late_group=True, resumes=2)),
        attrs.evolve(
            BASE,
            param_groups=2,
            flatten_optimizer_state_dict=False,
            checks=("continuation",),
            loop=Loop(late_group=True, resumes=2),  # with an empty group too: a torch bug (corpus)
        ),
        # a second save before the first is waited for: in flight beside it with async_save, in turn without
        attrs.evolve(BASE, storage=Dcp(api="async"), checks=("continuation",), loop=Loop(second_save=True)),
        attrs.evolve(BASE, load=Side(DDP(), (3,)), loop=Loop(second_save=True, resumes=2, ranks_from=1)),
    ]
    with RankPool(4) as pool:
        for case in cases:
            verdict = pool.run(case)
            assert verdict.status == "pass", (describe(case), verdict.signature())


DDP_BASE = attrs.evolve(BASE, save=Side(DDP(), (2,)), load=Side(DDP(), (2,)))

#: mutant -> (a plain case it passes, the same case with the one pattern that exposes it, the oracle made for it)
EXPOSED_BY = {
    "ParametersReplacedAtFirstForward": (DDP_BASE, Loop(save_held=True), "complete-state"),
    "LoadedIntoNewTensors": (BASE, Loop(resumes=2, load_held=True), "resumed-state"),
    "MissingKeysZeroed": (BASE, Loop(lenient=True), "complete-state"),
    "ResumedRunSavesStaleOptimizer": (BASE, Loop(resumes=2), "resumed-state"),
    "StepCountsUnified": (BASE, Loop(gradless="first-step"), "complete-state"),
    "EmptyGroupsKeepTheirOwnHyperparameters": (
        attrs.evolve(BASE, flatten_optimizer_state_dict=False),
        Loop(empty_group=True),
        "complete-state",
    ),
    "CompletionMarkedByGlobalRankZero": (BASE, Loop(ranks_from=1), "complete-state"),
    "ParamGroupsCachedAtFirstSave": (
        attrs.evolve(BASE, loop=Loop(resumes=2)),
        Loop(resumes=2, late_group=True),
        "resumed-state",
    ),
    "StagingBuffersReusedInFlight": (BASE, Loop(second_save=True), "complete-state"),
}


@pytest.mark.ranks
@pytest.mark.parametrize("mutant", sorted(EXPOSED_BY))
def test_each_loop_mutant_is_seen_only_through_its_pattern_and_by_its_oracle(mutant):
    plain, loop, oracle = EXPOSED_BY[mutant]
    exposed = attrs.evolve(plain, loop=loop)
    with RankPool(exposed.world_size, target=f"shardfuzz.targets.mutants:{mutant}") as pool:
        assert pool.run(plain).status == "pass"
        verdict = pool.run(exposed)
    assert verdict.status == "mismatch" and verdict.mismatches[0].oracle == oracle, verdict.signature()


def test_first_module_parameters_are_one_module_and_never_every_parameter():
    import torch

    from shardfuzz.rank.portable.optimizers import first_module_parameters

    two = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    assert first_module_parameters(two) == [two[0].bias, two[0].weight]
    one = torch.nn.Sequential(torch.nn.Linear(2, 3))  # its module holds every parameter: the first alone
    assert first_module_parameters(one) == [one[0].bias]
    assert first_module_parameters(torch.nn.Linear(2, 3, bias=False)) == []  # a step needs some gradient
