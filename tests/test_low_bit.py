"""torchao's low-bit AdamW (``LowBitAdamW``): optimizer state held in tensor subclasses (codes, per-block scales).

The kind is data (validated, JSON, a coverage label); drawn cases end in a Linear wide enough that torchao quantises
it; the oracles compare the dequantised moments and each inner tensor bit for bit; and a loader that drops the
scales is killed by ``complete-state``. The tests that run torchao skip where it is not installed.
"""

import attrs
import pytest
from hypothesis import HealthCheck, given, settings

from shardfuzz.capabilities import capabilities
from shardfuzz.case import FSDP2, LOW_BIT_WIDTH, Adam, Case, Linear, Loop, LowBitAdamW, Model, Sequential, Side
from shardfuzz.case.optimizers import optimizer_groups
from shardfuzz.case.scenario import dimensions
from shardfuzz.case.serial import from_dict, to_dict
from shardfuzz.executor import RankPool
from shardfuzz.strategies import cases

LOW_BIT = Case(
    model=Model(64, Sequential([Linear(256), Linear(4)])),
    save=Side(FSDP2(), (2,)),
    load=Side(FSDP2(), (2,)),
    optimizer=LowBitAdamW(bits=8),
    steps=2,
)
needs_torchao = pytest.mark.skipif(not capabilities().low_bit_optimizers, reason="torchao is not installed")


def test_the_kind_names_torchaos_class_round_trips_and_is_a_coverage_value():
    with pytest.raises(ValueError):
        LowBitAdamW(bits=2)
    assert optimizer_groups(LowBitAdamW(bits=4), 1)[0] == "AdamW4bit"
    assert from_dict(to_dict(LOW_BIT)) == LOW_BIT
    assert dimensions(LOW_BIT)["optimizer"] == "adamw8bit"
    assert dimensions(attrs.evolve(LOW_BIT, optimizer=Adam()))["optimizer"] == "adam"


@needs_torchao
@settings(max_examples=150, suppress_health_check=list(HealthCheck), database=None, deadline=None)
@given(cases(max_world_size=4))
def test_a_drawn_low_bit_case_ends_in_a_linear_torchao_quantises(case):
    if isinstance(case.optimizer, LowBitAdamW):
        assert case.model.root.children[-1] == Linear(LOW_BIT_WIDTH)


@needs_torchao
def test_a_low_bit_state_is_compared_dequantised_and_by_its_inner_tensors():
    import torch
    from torchao.optim import AdamW8bit

    from shardfuzz.rank.portable.steps import plain_parts

    weight = torch.nn.Parameter(torch.randn(64, 64))
    optim = AdamW8bit([weight])
    weight.grad = torch.randn(64, 64)
    optim.step()
    moment = optim.state[weight]["exp_avg"]
    parts = plain_parts("optim.state.w.exp_avg", moment)
    assert {"optim.state.w.exp_avg:codes", "optim.state.w.exp_avg:scale"} <= set(parts)
    assert type(parts["optim.state.w.exp_avg"]) is torch.Tensor
    assert torch.equal(parts["optim.state.w.exp_avg"], moment.dequantize())
    assert plain_parts("k", torch.ones(2)).keys() == {"k"}


@pytest.mark.ranks
@needs_torchao
def test_a_loader_that_drops_the_scales_is_killed_by_complete_state_and_only_with_a_low_bit_optimizer():
    plain = attrs.evolve(LOW_BIT, optimizer=Adam())
    with RankPool(2, target="shardfuzz.targets.mutants:LowBitScalesNotLoaded") as pool:
        assert pool.run(plain).status == "pass"
        verdict = pool.run(LOW_BIT)
    assert verdict.status == "mismatch" and verdict.mismatches[0].oracle == "complete-state", verdict.signature()
    assert any(m.key.endswith(":scale") for m in verdict.mismatches), [m.key for m in verdict.mismatches]


@pytest.mark.ranks
@needs_torchao
def test_an_eight_bit_fsdp2_round_trip_in_the_same_layout_passes():
    with RankPool(2) as pool:
        verdict = pool.run(LOW_BIT)
    assert verdict.status == "pass", verdict.signature()


def test_an_inner_tensor_on_one_side_only_is_representation_but_its_values_still_compare():
    import torch

    from shardfuzz.rank.oracles import compare_state

    quantised = {"optim.state.w.exp_avg": torch.ones(2), "optim.state.w.exp_avg:codes": torch.ones(2)}
    assert compare_state(quantised, {"optim.state.w.exp_avg": torch.ones(2)}, rank=0) == []
    off = compare_state(quantised, {"optim.state.w.exp_avg": torch.zeros(2)}, rank=0)
    assert [m.key for m in off] == ["optim.state.w.exp_avg"]
    lost = compare_state(quantised, {"optim.state.w.exp_avg:codes": torch.ones(2)}, rank=0)
    assert [m.detail for m in lost] == ["missing after load"]


def test_the_next_learning_rate_is_read_without_changing_a_tensor_lr():
    # torchao keeps lr as a Tensor, which a scheduler steps in place: reading the next lr must undo that in place.
    import torch

    from shardfuzz.rank.portable.steps import app_values, make_app_state

    weight = torch.nn.Parameter(torch.ones(2))
    optim = torch.optim.SGD([weight], lr=torch.tensor(0.1))
    app = make_app_state(optim, {"scheduler": "cosine", "grad_scaler": False}, engine="DDP", group=None)
    lr = optim.param_groups[0]["lr"]
    values = app_values(app, optim)
    assert optim.param_groups[0]["lr"] is lr and lr.item() == pytest.approx(0.1)
    assert values["app.next_lr"][0].item() < 0.1


def test_a_low_bit_case_keeps_a_tripled_generic_deadline():
    # One such case took 30 s on 2 cores (its state through torchao's and DTensor's dispatch) and passed as a hang.
    from shardfuzz.executor.deadlines import deadline_for

    assert deadline_for(LOW_BIT) == pytest.approx(3 * deadline_for(attrs.evolve(LOW_BIT, optimizer=Adam())))


def test_a_moment_quantised_on_one_side_only_may_move_by_half_a_grid_step_and_no_more():
    import torch

    from shardfuzz.rank.oracles import compare_state

    grid = {"m:qmap": torch.tensor([0.0, 0.5, 1.0]), "m:scale": torch.tensor([2.0])}  # steps of 1.0: error <= 0.5
    plain = {"m": torch.tensor([0.0, 1.3])}
    assert compare_state(plain, {"m": torch.tensor([0.0, 1.0]), **grid}, rank=0) == []
    off = compare_state(plain, {"m": torch.tensor([0.0, 2.0]), **grid}, rank=0)
    assert [m.key for m in off] == ["m"]
    both = {"m": torch.tensor([0.0, 1.0]), **grid}
    assert [m.key for m in compare_state({"m": torch.tensor([0.0, 1.3]), **grid}, both, rank=0)] == ["m"]


@pytest.mark.ranks
@needs_torchao
def test_a_low_bit_full_offload_check_counts_the_moment_not_its_inner_tensors():
    # The self-test met this: full-offload asked rank 0 for 'exp_avg:codes', which no state dict holds.
    from shardfuzz.case import DDP

    case = attrs.evolve(
        LOW_BIT,
        model=Model(1, Sequential([Linear(4096)])),
        save=Side(DDP(), (1,)),
        load=Side(DDP(), (1,)),
        steps=0,
        checks=("full-offload",),
    )
    # Nor an empty param group's hyperparameters, which gather_full records beside the state: torchao's lr is a
    # Tensor, so the check had asked rank 0 for 'optim.empty_param_groups.1.lr' (a 600 s run met it).
    grouped = attrs.evolve(case, steps=1, loop=Loop(empty_group=True), flatten_optimizer_state_dict=False)
    with RankPool(1) as pool:
        assert pool.run(case).status == "pass"
        assert pool.run(grouped).status == "pass"


def test_the_shrinker_first_tries_without_the_low_bit_optimizer_and_its_wide_linear():
    from shardfuzz.case import AdamW
    from shardfuzz.search.shrink import simpler_cases

    drawn = attrs.evolve(LOW_BIT, model=Model(64, Sequential([Linear(4), Linear(LOW_BIT_WIDTH)])))
    first = next(iter(simpler_cases(drawn)))
    assert first.optimizer == AdamW() and first.model == Model(64, Sequential([Linear(4)]))
