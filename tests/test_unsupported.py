"""The documented-unsupported rules: cases they exclude are never drawn and never run."""

import attrs
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from shardfuzz import strategies as sf
from shardfuzz.case import DDP, FSDP1, FSDP2, SGD, Case, Dcp, Linear, Model, Sequential, Side, Tied
from shardfuzz.unsupported import CASE_RULES, RULES, excluded, needs_other_world


def _case(save_engine, param_groups):
    return Case(
        model=Model(2, Sequential([Linear(3), Linear(2)])),
        save=Side(save_engine, (2,)),
        load=Side(FSDP2(), (1,)),
        optimizer=SGD(),
        param_groups=param_groups,
    )


@pytest.mark.parametrize(
    "engine, groups, rule",
    [
        (FSDP1(use_orig_params=False), 2, "flat-parameter-groups"),
        (FSDP1(use_orig_params=False), 1, None),
        (FSDP1(use_orig_params=True), 2, None),
        (FSDP2(), 2, None),
    ],
)
def test_case_rules(engine, groups, rule):
    found = excluded(_case(engine, groups))
    assert (found.name if found else None) == rule


@pytest.mark.parametrize(
    "engine, mesh, pool_ranks, rule, other_world",
    [
        (FSDP2(), (2,), 2, None, False),
        (FSDP2(), (2,), 4, None, True),  # the load side leaves ranks of the group out of the broadcast
        (FSDP1(), (2,), 2, "broadcast-from-rank0-fsdp1", False),  # documented: DTensor only
    ],
)
def test_broadcast_from_rank0_limits(engine, mesh, pool_ranks, rule, other_world):
    load = Side(engine, mesh, state_dict="full", broadcast_from_rank0=True, state_dict_api="separate")
    case = attrs.evolve(_case(FSDP2(), 1), load=load, flatten_optimizer_state_dict=False)
    found = excluded(case)
    assert (found.name if found else None) == rule
    why = needs_other_world(case, pool_ranks)
    assert bool(why) == other_world and (not why or "default process group" in why)
    assert not needs_other_world(attrs.evolve(case, load=attrs.evolve(load, broadcast_from_rank0=False)), pool_ranks)


@pytest.mark.parametrize(
    "engine, rule",
    [
        (FSDP1(wrap_policy="always"), "fsdp1-shared-parameter-across-units"),
        (FSDP1(wrap_policy="size-based", min_num_params=10), "fsdp1-shared-parameter-across-units"),
        (FSDP1(wrap_policy="module-type", module_types=("Linear",)), "fsdp1-shared-parameter-across-units"),
        (FSDP1(wrap_policy="module-type", module_types=("Tied",)), None),  # the pair stays in one unit
        (FSDP1(), None),
        (FSDP2(), None),
    ],
)
def test_a_tied_weight_split_across_fsdp1_units_is_unsupported(engine, rule):
    case = attrs.evolve(_case(engine, 1), model=Model(2, Sequential([Linear(3), Tied()])))
    found = excluded(case)
    assert (found.name if found else None) == rule


@pytest.mark.parametrize(
    ("engine", "checks", "gradless", "rule"),
    [
        (FSDP1(use_orig_params=False), ("continuation",), "always", "gradless-flat-parameters-continuation"),
        (FSDP1(use_orig_params=False), ("continuation",), "never", None),
        (FSDP1(use_orig_params=False), (), "first-step", None),  # no two trainings compared
        (FSDP1(use_orig_params=True), ("continuation",), "always", None),
        (DDP(), ("continuation",), "always", None),
    ],
)
def test_a_gradless_continuation_through_flat_parameters_is_unsupported(engine, checks, gradless, rule):
    # run T's cc570f41: the first FlatParameter is not the first module's parameters, so the sides train others
    case = attrs.evolve(_case(engine, 1), checks=checks)
    case = attrs.evolve(case, loop=attrs.evolve(case.loop, gradless=gradless))
    found = excluded(case)
    assert (found.name if found else None) == rule


def test_every_rule_gives_its_reason():
    for rule in CASE_RULES + RULES:
        assert rule.name and len(rule.reason) > 40, rule


def test_the_strategies_never_draw_an_excluded_case():
    @settings(max_examples=300, phases=[Phase.generate], database=None, suppress_health_check=list(HealthCheck))
    @given(sf.cases())
    def draw(case):
        assert excluded(case) is None

    draw()


@pytest.mark.ranks
def test_the_pool_answers_unsupported_without_running_the_case():
    from shardfuzz.executor import RankPool

    pool = RankPool(2)
    verdict = pool.run(_case(FSDP1(use_orig_params=False), 2))
    assert verdict.status == "unsupported" and "flat-parameter-groups" in verdict.detail
    assert pool.starts == 0  # no rank was started for it
    pool.close()


@pytest.mark.ranks
@pytest.mark.slow
def test_fsdp1_flattening_frozen_and_trainable_together_is_unsupported_not_a_finding(shardfuzz_pool):
    """The run-time rule: torch's own argument check, matched by message, becomes ``unsupported``."""
    mixed = Model(2, Sequential([Linear(3, frozen=True), Linear(2)]))
    case = Case(model=mixed, save=Side(FSDP1(use_orig_params=False), (2,)), load=Side(FSDP2(), (1,)), optimizer=SGD())
    verdict = shardfuzz_pool.run(case)
    assert verdict.status == "unsupported", verdict.summary()
    assert "uniform `requires_grad`" in verdict.summary()
    # The same found earlier by an auto-wrap policy (its own message), with the case shrunk from a campaign.
    policy = Side(FSDP1(use_orig_params=False, wrap_policy="module-type", module_types=("Sequential",)), (1,))
    verdict = shardfuzz_pool.run(attrs.evolve(case, save=policy))
    assert verdict.status == "unsupported", verdict.summary()
    assert "does not support wrapping such modules" in verdict.errors[0].message
    # Each unit uniform (every Linear its own unit): FSDP1 flattens it, and the round-trip passes.
    per_layer = Case(
        model=mixed,
        save=Side(FSDP1(use_orig_params=False), (2,), wrap=("0", "1")),
        load=Side(FSDP2(), (1,)),
        optimizer=SGD(),
    )
    assert shardfuzz_pool.run(per_layer).ok


def _plain_case(**changes):
    case = Case(
        model=Model(2, Sequential([Linear(3)])), save=Side(DDP(), (2,)), load=Side(DDP(), (2,)), optimizer=SGD()
    )
    return attrs.evolve(case, **changes)


@pytest.mark.parametrize(
    "changes, target, device, refused",
    [
        ({}, "shardfuzz.targets:DcpTarget", "cpu", None),
        (
            {"param_groups": 2, "save": Side(FSDP1(use_orig_params=False), (2,))},
            "shardfuzz.targets:DcpTarget",
            "cpu",
            "flat-parameter-groups",
        ),
        ({"storage": Dcp(api="legacy")}, "user_target:ForgetsTheStep", "cpu", "storage:"),
        (
            {"load": Side(DDP(), (2,), device="cuda")},
            "shardfuzz.targets:DcpTarget",
            "cpu",
            "cuda-side:",
        ),
    ],
)
def test_every_executor_admits_a_case_by_the_same_check(changes, target, device, refused):
    from shardfuzz.executor.admission import admit

    verdict = admit(_plain_case(**changes), world_size=2, target=target, device=device)
    if refused is None:
        assert verdict is None
    else:
        assert verdict.status == "unsupported" and verdict.detail.startswith(refused), verdict
    with pytest.raises(ValueError, match="needs 2 ranks"):
        admit(_plain_case(**changes), world_size=1, target=target, device=device)


def test_torchrun_and_the_pool_call_the_one_admission_check():
    import inspect

    from shardfuzz.executor import pool, torchrun

    assert "admit(" in inspect.getsource(pool.RankPool.run) and "admit(" in inspect.getsource(
        torchrun.TorchrunWorld.run
    )


MODEL = Model(2, Sequential([Linear(3), Linear(2)]))


@pytest.fixture
def no_fsdp1_subgroups(monkeypatch):
    """This torch as one without DSD's _get_fsdp_process_group (2.10, 2.11): FSDP1 must span the world."""
    import dataclasses
    import importlib

    import shardfuzz.capabilities

    caps = dataclasses.replace(shardfuzz.capabilities.capabilities(), fsdp1_subgroups=False, cuda_devices=1)
    strategies = ("shardfuzz.strategies.cases", "shardfuzz.strategies.sides")
    for module in (shardfuzz.capabilities, *map(importlib.import_module, strategies)):
        monkeypatch.setattr(module, "capabilities", lambda *a, **k: caps)


def test_without_fsdp1_subgroups_an_fsdp1_side_needs_a_world_of_its_own_size(no_fsdp1_subgroups):
    from shardfuzz.unsupported import exact_world_size

    case = Case(model=MODEL, save=Side(FSDP1(), (1,)), load=Side(DDP(), (2,)), optimizer=SGD())
    assert exact_world_size(case) == 1
    assert needs_other_world(case, 1) == ""
    assert needs_other_world(case, 4).startswith("fsdp1-whole-world")
    assert "1 of 4 ranks" in needs_other_world(case, 4)


def test_with_fsdp1_subgroups_an_fsdp1_side_runs_in_any_world():
    from shardfuzz.capabilities import capabilities
    from shardfuzz.unsupported import exact_world_size

    if not capabilities().fsdp1_subgroups:
        pytest.skip("this torch lacks fsdp1_subgroups")
    case = Case(model=MODEL, save=Side(FSDP1(), (1,)), load=Side(DDP(), (2,)), optimizer=SGD())
    assert exact_world_size(case) is None and needs_other_world(case, 4) == ""


def test_without_fsdp1_subgroups_fsdp1_sides_span_the_pool_on_cpu_where_cuda_could_not(no_fsdp1_subgroups):
    seen = set()

    @settings(max_examples=150, phases=[Phase.generate], database=None, suppress_health_check=list(HealthCheck))
    @given(sf.cases(max_world_size=2, devices=("cpu", "cuda"), gpus=1))
    def check(case):
        for side in (case.save, case.load):
            if isinstance(side.engine, FSDP1) and not side.engine.hybrid:
                seen.add((side.device, side.world_size))

    check()
    assert seen == {("cpu", 2)}
