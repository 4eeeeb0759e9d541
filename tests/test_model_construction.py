"""How a side puts its model together: activation checkpointing, torch.compile, the meta device.

Each renames parameters or leaves values to be made after sharding; a checkpoint must load
across a change of any of them exactly or fail loudly. The faults here are the ones such
code makes: a non-persistent buffer left as ``to_empty`` left it.
"""

from __future__ import annotations

import pytest

from shardfuzz.capabilities import capabilities
from shardfuzz.case import (
    DDP,
    FSDP1,
    FSDP2,
    PP,
    TP,
    Adam,
    Block,
    Case,
    Linear,
    Model,
    Sequential,
    Side,
    TorchSave,
    TransformerBlock,
    dimensions,
    dumps,
    loads,
)
from shardfuzz.executor import RankPool
from shardfuzz.executor.referee import rounding_suspect
from shardfuzz.findings.describe import describe
from shardfuzz.rank.portable.sharding import unwrapped_name

MODEL = Model(input_width=3, root=Sequential([Linear(4), Block([TransformerBlock(2, 2, 1, 3)]), Linear(2)]))


def _case(save: Side, load: Side, **fields) -> Case:
    return Case(model=MODEL, save=save, load=load, optimizer=Adam(), steps=2, checks=("continuation",), **fields)


def test_the_json_leaves_them_out_at_their_defaults_and_round_trips_them():
    plain = _case(Side(FSDP2(), (2,)), Side(DDP(), (2,)))
    for field in ("activation_checkpointing", "checkpointed", "compiled", "meta_init"):
        assert field not in dumps(plain)
    wrapped = _case(
        Side(FSDP2(), (2,), activation_checkpointing="after", checkpointed=["1.a", "0"], meta_init=True),
        Side(DDP(), (2,), compiled=True),
    )
    assert loads(dumps(wrapped)) == wrapped
    assert wrapped.save.checkpointed == ("0", "1.a")
    assert dimensions(wrapped)["save_activation_checkpointing"] == "after"
    assert dimensions(wrapped)["load_compiled"] == "true"
    assert dimensions(wrapped)["save_meta_init"] == "true"
    assert "ac-after[0,1.a]" in describe(wrapped) and "compiled" in describe(wrapped)


@pytest.mark.parametrize(
    "side, message",
    [
        (dict(activation_checkpointing="before"), "checkpointed names leaves exactly when"),
        (dict(checkpointed=["0"]), "checkpointed names leaves exactly when"),
        (dict(activation_checkpointing="sideways", checkpointed=["0"]), "activation_checkpointing"),
    ],
)
def test_a_side_with_inconsistent_wrappers_is_refused(side, message):
    with pytest.raises(ValueError, match=message):
        Side(FSDP2(), (2,), **side)


def test_only_leaves_are_checkpointed():
    with pytest.raises(ValueError, match="not leaves"):
        _case(Side(FSDP2(), (2,), activation_checkpointing="before", checkpointed=["1"]), Side(DDP(), (2,)))


@pytest.mark.parametrize(
    "name, plain",
    [
        ("_orig_mod.module.0.weight", "0.weight"),
        ("_fsdp_wrapped_module.1._checkpoint_wrapped_module.a.wq.weight", "1.a.wq.weight"),
        ("module.2.bias", "2.bias"),
    ],
)
def test_wrapper_prefixes_are_stripped(name, plain):
    assert unwrapped_name(name) == plain


@pytest.mark.ranks
def test_a_checkpoint_loads_across_wrappers_and_a_forgotten_rotary_table_is_caught():
    if not (capabilities().activation_checkpointing and capabilities().compile):
        pytest.skip("this torch lacks activation checkpointing or torch.compile")
    wrapped = _case(
        Side(FSDP2(), (2,), wrap=["1"], activation_checkpointing="before", checkpointed=["1.a"], meta_init=True),
        Side(DDP(), (2,), compiled=True, meta_init=True),
    )
    reverse = _case(wrapped.load, Side(FSDP1(), (2,), activation_checkpointing="after", checkpointed=["0", "1.a"]))
    with RankPool(2) as pool:
        assert [pool.run(case).status for case in (wrapped, reverse)] == ["pass", "pass"]
    with RankPool(2, target="shardfuzz.targets.mutants:RotaryTableLeftEmpty") as pool:
        case = _case(Side(DDP(), (2,)), Side(FSDP2(), (2,), meta_init=True))
        verdict = pool.run(case)
    assert verdict.status == "mismatch", verdict
    assert {m.oracle for m in verdict.mismatches} == {"continuation"}
    assert rounding_suspect(case, verdict)  # the float64 referee ran it again, and it failed there too


@pytest.mark.parametrize(
    "side, message",
    [
        (lambda: Side(DDP(), (2,), mixed_precision="bf16"), "mixed_precision is FSDP's"),
        (lambda: Side(FSDP1(), (2,), offload_params=True), "offload_params is FSDP2's"),
        (lambda: Side(TP(plan=[("0", "colwise")]), (2, 2)), "dp 1 unless fsdp"),
        (lambda: Side(TP(plan=[("0", "colwise")]), (2,)), "2-D"),
        (lambda: Side(TP(), (1, 2)), "needs a plan"),
        (lambda: TP(plan=[("0", "diagonal")]), "not among"),
        (lambda: TP(plan=[("0", "colwise"), ("0", "rowwise")]), "one style"),
        (lambda: Side(PP(), (2,)), "2-D"),
        (lambda: Side(PP(), (1, 2)), "pp >= 2"),
        (lambda: Side(PP(), (2, 2)), "dp 1 unless fsdp"),
        (lambda: Side(PP(), (2, 1), compiled=True), "torch.compile"),
        (lambda: Side(PP(fsdp=True), (2, 2), activation_checkpointing="before", checkpointed=["0"]), "activation"),
        (lambda: PP(fsdp=True, plan=[("0", "colwise")]), "fsdp False"),
        (lambda: Side(PP(plan=[("0", "colwise")]), (2, 1)), "tp >= 2"),
        (lambda: PP(plan=[("0", "sideways")]), "not among"),
    ],
)
def test_mixed_precision_offload_and_tensor_parallel_sides_are_checked(side, message):
    with pytest.raises(ValueError, match=message):
        side()


def test_a_plan_names_linears_and_mixed_precision_needs_a_float32_model():
    with pytest.raises(ValueError, match="cannot split"):
        _case(Side(TP(plan=[("1.a", "colwise")]), (1, 2)), Side(DDP(), (2,)))
    with pytest.raises(ValueError, match=r"cannot split .*\['0'\]"):  # experts split an Experts leaf, not a Linear
        _case(Side(TP(plan=[("0", "experts")]), (1, 2)), Side(DDP(), (2,)))
    bf16 = Model(input_width=3, root=Sequential([Linear(2)]), dtype="bfloat16")
    with pytest.raises(ValueError, match="float32"):
        Case(model=bf16, save=Side(FSDP2(), (2,), mixed_precision="bf16"), load=Side(DDP(), (2,)), optimizer=Adam())
    tp = _case(Side(TP(plan=[("2", "rowwise"), ("0", "colwise")], fsdp=True), (2, 2)), Side(DDP(), (2,)))
    assert loads(dumps(tp)) == tp and tp.save.engine.plan == (("0", "colwise"), ("2", "rowwise"))
    assert dimensions(tp)["save_tp_styles"] == "both" and dimensions(tp)["load_tp_fsdp"] == "n/a"
    assert "fsdp [0:col,2:row]" in describe(tp)


def test_pipeline_stages_cut_the_root_in_order_and_a_case_checks_what_they_need():
    from shardfuzz.rank.portable.sharding import stage_bounds

    assert stage_bounds(3, 2) == [0, 2, 3] and stage_bounds(3, 3) == [0, 1, 2, 3] and stage_bounds(5, 2) == [0, 3, 5]
    with pytest.raises(ValueError, match="need as many root children"):
        Case(
            model=Model(2, Sequential([Linear(2), Linear(2)])),
            save=Side(PP(), (3, 1)),
            load=Side(DDP(), (1,)),
            optimizer=Adam(),
            steps=1,
        )
    pipelined = _case(Side(PP(fsdp=True), (2, 2)), Side(DDP(), (2,)))
    assert loads(dumps(pipelined)) == pipelined
    assert dimensions(pipelined)["save_pp_degree"] == "2" and dimensions(pipelined)["save_pp_fsdp"] == "true"
    assert "PPx4 mesh (2, 2) fsdp" in describe(pipelined)
    inside = _case(Side(PP(plan=[("2", "rowwise"), ("0", "colwise")]), (2, 2)), Side(DDP(), (2,)))
    assert loads(dumps(inside)) == inside and dimensions(inside)["save_pp_tp"] == "true"
    assert dimensions(pipelined)["save_pp_tp"] == "false" and "PPx4 mesh (2, 2) [0:col,2:row]" in describe(inside)
    with pytest.raises(ValueError, match="cannot split"):
        _case(Side(PP(plan=[("1.a", "colwise")]), (2, 2)), Side(DDP(), (2,)))
    with pytest.raises(ValueError, match="one stage"):  # run O: the file held the first stage only
        full = {"state_dict": "full"}
        _case(Side(PP(), (2, 1), **full), Side(DDP(), (2,), **full), storage=TorchSave())
    with pytest.raises(ValueError, match="every stage's keys"):  # run Q: a strict load refused the other stages' keys
        _case(Side(DDP(), (2,), **full), Side(PP(), (2, 1), **full), storage=TorchSave())
    with pytest.raises(ValueError, match="full-offload"):
        Case(model=MODEL, save=Side(DDP(), (2,)), load=Side(PP(), (2, 1)), optimizer=Adam(), checks=("full-offload",))


@pytest.mark.ranks
def test_tensor_parallelism_inside_pipeline_stages_round_trips_across_layouts():
    """(pp, tp) = (2, 2): each stage splits its own planned Linears across tp and trains on the batch every rank
    sees; its checkpoint loads into three plain stages, and a DDP one into it (layout judged on the load side)."""
    model = Model(4, Sequential([Linear(6), Linear(8), Linear(4)]))
    inside = Side(PP(plan=(("0", "colwise"), ("1", "rowwise"), ("2", "colwise"))), (2, 2))
    cases = [
        Case(model=model, save=inside, load=Side(PP(), (3, 1)), optimizer=Adam(), steps=2, checks=("continuation",)),
        Case(model=model, save=Side(DDP(), (2,)), load=inside, optimizer=Adam(), steps=2, checks=("continuation",)),
    ]
    with RankPool(4) as pool:
        for case in cases:
            verdict = pool.run(case)
            assert verdict.status == "pass", (describe(case), verdict.summary())
