"""Training state beyond the model and optimizer (``Case.training``): drawn, written, round-tripped, judged.

A case with training state saves an LR scheduler, a gradient scaler, the step counter and
a user object as one ``Stateful`` in the DCP checkpoint. The load must restore each, and
the scheduler's next learning rate with them; a loader that leaves them out is caught.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from shardfuzz.case import (
    FSDP1,
    FSDP2,
    SCHEDULERS,
    Adam,
    Case,
    Dcp,
    Linear,
    Model,
    Sequential,
    Side,
    TorchSave,
    TrainingState,
    TransformerBlock,
    dimensions,
    dumps,
    loads,
)
from shardfuzz.executor import RankPool
from shardfuzz.strategies import cases

MODEL = Model(input_width=3, root=Sequential([Linear(5), TransformerBlock(2, 2, 1, 3), Linear(2)]))


WARMUP_WITH_SCALER = TrainingState("warmup-cosine", grad_scaler=True)


def _case(**fields) -> Case:
    defaults = dict(
        model=MODEL,
        save=Side(engine=FSDP2(), mesh_shape=(2,)),
        load=Side(engine=FSDP1(), mesh_shape=(1,), state_dict="full"),
        optimizer=Adam(),
        steps=3,
        checks=("continuation",),
        training=WARMUP_WITH_SCALER,
    )
    return Case(**{**defaults, **fields})


def test_json_leaves_it_out_when_absent_and_round_trips_it_when_present():
    assert '"training"' not in dumps(_case(training=None))
    case = _case()
    assert loads(dumps(case)) == case
    assert dimensions(case)["training_state"] == "warmup-cosine"
    assert dimensions(case)["grad_scaler"] == "true"
    assert dimensions(_case(training=None))["training_state"] == "none"


@pytest.mark.parametrize(
    "storage, why",
    [(Dcp(api="legacy"), "Stateful"), (TorchSave(), "Stateful")],
)
def test_it_needs_a_dcp_checkpoint_that_takes_a_stateful(storage, why):
    with pytest.raises(ValueError, match=why):
        _case(storage=storage, save=Side(engine=FSDP2(), mesh_shape=(2,), state_dict="full"))


def test_an_unknown_scheduler_is_refused():
    with pytest.raises(ValueError, match="scheduler"):
        TrainingState("exponential")


@settings(max_examples=150, deadline=None, database=None)
@given(cases(max_world_size=2))
def test_drawn_only_where_the_checkpoint_can_hold_it(case):
    if case.training is not None:
        assert isinstance(case.storage, Dcp) and case.storage.api != "legacy"
        assert case.training.scheduler in SCHEDULERS


@pytest.mark.ranks
def test_the_state_round_trips_and_a_loader_that_skips_it_is_caught():
    with RankPool(2) as pool:
        verdict = pool.run(_case())
    assert verdict.status == "pass", verdict
    with RankPool(2, target="shardfuzz.targets.mutants:TrainingStateNotLoaded") as pool:
        verdict = pool.run(_case())
    assert verdict.status == "mismatch", verdict
    keys = {m.key for m in verdict.mismatches}
    assert {"app.step", "app.next_lr", "app.grad_scaler.scale", "app.user.positions"} <= keys, sorted(keys)
