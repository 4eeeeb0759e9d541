"""DeepSpeed's ZeRO engine and checkpointing (``--target deepspeed``): the data model's side of it everywhere, and
where DeepSpeed is installed (``pip install 'shardfuzz[deepspeed]'``; not in CI, ``tox -e deepspeed``) round-trips
on the pool's CPU ranks, through the same layout and through DeepSpeed's universal checkpoint, and a fault in its
path caught."""

import attrs
import pytest

from shardfuzz.case import (
    FSDP2,
    Adam,
    Attention,
    BatchNorm,
    Case,
    LayerNorm,
    Linear,
    Model,
    Sequential,
    Side,
    Unsharded,
    ZeRO,
    dimensions,
)
from shardfuzz.case.serial import dumps, loads
from shardfuzz.targets import support_for, unavailable
from shardfuzz.targets.support import EVERYTHING, TargetSupport
from shardfuzz.unsupported import excluded


def _case(save: ZeRO, load: ZeRO | Unsharded, save_ranks: int = 3, load_ranks: int = 3, optimizer=None) -> Case:
    return Case(
        model=Model(3, Sequential([Linear(5), LayerNorm(), Linear(2)])),
        save=Side(save, (save_ranks,)),
        load=Side(load, (1,) if isinstance(load, Unsharded) else (load_ranks,)),
        optimizer=optimizer or Adam(),
        steps=2,
        flatten_optimizer_state_dict=False,
    )


def test_a_zero_side_is_plain_data_that_round_trips_and_has_its_dimensions():
    case = _case(ZeRO(stage=3, bf16=True), ZeRO(stage=1))
    assert loads(dumps(case)) == case
    values = dimensions(case)
    assert (values["save_zero_stage"], values["save_zero_bf16"], values["load_zero_stage"]) == ("3", "true", "1")
    with pytest.raises(ValueError):
        ZeRO(stage=4)


def test_only_a_target_that_names_zero_draws_or_runs_it():
    case = _case(ZeRO(), ZeRO())
    assert not EVERYTHING.allows_engine("zero") and EVERYTHING.allows_engine("fsdp2")
    assert "deepspeed" in EVERYTHING.refuses(case, world_size=2)


def test_a_zero_side_runs_the_plain_loop_only():
    case = _case(ZeRO(), ZeRO())
    assert excluded(case) is None
    gradless = attrs.evolve(case, loop=attrs.evolve(case.loop, gradless="always"))
    assert excluded(gradless).name == "zero-side-plain-loop"


def test_a_load_across_zero_3_is_refused_as_no_documented_route():
    assert excluded(_case(ZeRO(1), ZeRO(3))).name == "zero-stage-3-crossing"
    assert excluded(_case(ZeRO(3, bf16=True), ZeRO(2))).name == "zero-stage-3-crossing"
    assert excluded(_case(ZeRO(1), ZeRO(2), load_ranks=1)) is None  # 1 and 2 write the same files


def test_a_deepspeed_checkpoint_loads_by_its_routes_only():
    consolidated = _case(ZeRO(2, bf16=True), Unsharded())
    assert consolidated.consolidates_zero and consolidated.loads_model_only
    with pytest.raises(ValueError, match="zero_to_fp32"):
        attrs.evolve(consolidated, load=Side(FSDP2(), (2,)))
    with pytest.raises(ValueError, match="ZeRO engine too"):
        attrs.evolve(consolidated, save=Side(Unsharded(), (1,)), load=Side(ZeRO(), (2,)))
    with pytest.raises(ValueError, match="optimizer as built"):
        attrs.evolve(consolidated, checks=("continuation",))


def test_a_load_only_engine_is_allowed_on_the_load_side_alone():
    support = TargetSupport(engines=("ZeRO",), load_engines=("Unsharded",), reasons={"engines": "ZeRO saves"})
    consolidated = _case(ZeRO(1), Unsharded())
    assert support.refuses(consolidated, world_size=3, per_side=True) == ""
    plain = attrs.evolve(consolidated, save=Side(Unsharded(), (1,)))  # no DeepSpeed checkpoint to load
    assert support.refuses(plain, world_size=3, per_side=True).startswith("target-support engines")
    assert support.allows_engine("unsharded") and not support.allows_engine("unsharded", side="save")


def test_an_exported_zero_case_fills_a_world_of_its_sides_size_or_is_refused_with_why():
    pytest.importorskip("deepspeed")  # export names the target's framework
    from shardfuzz.findings.corpus import entry_for
    from shardfuzz.findings.export import export_script
    from shardfuzz.verdict import RankError, Verdict

    failed = Verdict("error", errors=(RankError(0, "train", "IndexError", "list index out of range"),))
    script = export_script(entry_for(_case(ZeRO(1), ZeRO(1), 2, 2), failed, target="deepspeed", world_size=3))
    assert "\nWORLD_SIZE = 2  #" in script and "engine_over(" in script
    consolidated = export_script(entry_for(_case(ZeRO(3), Unsharded(), 2), failed, target="deepspeed", world_size=3))
    assert "\nWORLD_SIZE = 2  #" in consolidated
    with pytest.raises(ValueError, match="one world"):
        export_script(entry_for(_case(ZeRO(1), ZeRO(1), 2, 1), failed, target="deepspeed", world_size=2))


def _needs_deepspeed():
    why = unavailable("deepspeed")
    if why:
        pytest.skip(f"DeepSpeed cannot be had here: {why}")


ROUND_TRIPS = {
    "stage 1, same layout": _case(ZeRO(1), ZeRO(1)),
    "stage 3, same layout": _case(ZeRO(3), ZeRO(3)),
    "stage 1, bf16, same layout": _case(ZeRO(1, bf16=True), ZeRO(1, bf16=True)),
    "stage 2, float32 to bf16 (universal)": _case(ZeRO(2), ZeRO(2, bf16=True)),
    "stage 3, 3 ranks to 1 (universal)": _case(ZeRO(3), ZeRO(3), load_ranks=1),
    "stage 1, 2 ranks to 3 (universal)": _case(ZeRO(1), ZeRO(1), save_ranks=2),
    "stage 1 to an unsharded model (zero_to_fp32)": _case(ZeRO(1), Unsharded()),
    "stage 3, bf16, to an unsharded model (zero_to_fp32)": _case(ZeRO(3, bf16=True), Unsharded()),
    # a rotary embedding's inv_freq is a non-persistent buffer: in no state dict, so in no full state either
    "stage 3, attention, to an unsharded model (zero_to_fp32)": attrs.evolve(
        _case(ZeRO(3), Unsharded()), model=Model(2, Sequential([Attention(heads=1, kv_heads=1, head_dim=2), Linear(1)]))
    ),
    "stage 1, a BatchNorm, 2 ranks": attrs.evolve(
        _case(ZeRO(1), ZeRO(1), 2, 2), model=Model(3, Sequential([BatchNorm(), Linear(2)]))
    ),
}


@pytest.mark.ranks
@pytest.mark.parametrize("name", list(ROUND_TRIPS))
def test_deepspeed_round_trips_across_stages_and_ranks(name):
    _needs_deepspeed()
    from shardfuzz.pytest_plugin import shared_pool

    case = ROUND_TRIPS[name]
    assert support_for("deepspeed").refuses(case, world_size=3, per_side=True) == ""
    verdict = shared_pool(3, target="deepspeed").run(case)
    assert verdict.ok, verdict.summary()


@pytest.mark.ranks
@pytest.mark.parametrize(
    ("fault", "case"),
    [
        ("StepCountersReset", ROUND_TRIPS["stage 2, float32 to bf16 (universal)"]),
        ("HyperparametersNotRestored", ROUND_TRIPS["stage 3, same layout"]),
        ("PerturbLoadedParameter", ROUND_TRIPS["stage 1, same layout"]),
        ("FirstMomentsNotLoaded", ROUND_TRIPS["stage 3, 3 ranks to 1 (universal)"]),
        ("BuffersNotLoaded", ROUND_TRIPS["stage 1, a BatchNorm, 2 ranks"]),
        ("PerturbLoadedParameter", ROUND_TRIPS["stage 3, bf16, to an unsharded model (zero_to_fp32)"]),
    ],
)
def test_a_fault_in_deepspeeds_path_is_caught_by_complete_state(fault, case):
    _needs_deepspeed()
    from shardfuzz.pytest_plugin import shared_pool

    verdict = shared_pool(3, target=f"deepspeed+{fault}").run(case)
    assert verdict.status == "mismatch", verdict.summary()
    assert "complete-state" in {m.oracle for m in verdict.mismatches}, verdict.summary()
