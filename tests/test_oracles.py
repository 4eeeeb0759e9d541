"""The state oracle fails on each kind of wrong state and passes on the right one."""

import attrs
import pytest
import torch

from shardfuzz.rank.oracles import compare_state, expected_after_load, first_bit_difference, replica_consistency
from shardfuzz.verdict import Mismatch, RankError, Verdict, canonical_signature, normalise_message


def _state():
    return {
        "model.0.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "model.0.bias": torch.tensor([0.5, -0.0, float("nan")]),
        "optim.state.0.weight.step": torch.tensor(3.0),
        "optim.state.0.weight.exp_avg": torch.ones(3, 4),
        "optim.param_groups.0.weight.lr": 0.01,
        "optim.param_groups.0.weight.betas": (0.9, 0.999),
    }


def test_equal_state_passes_including_nan_and_signed_zero():
    assert compare_state(_state(), _state(), rank=0) == []


def _wrong(edit):
    state = _state()
    edit(state)
    return state


@pytest.mark.parametrize(
    "edit, key, detail, index",
    [
        (lambda s: s["model.0.weight"].__setitem__((2, 1), 99.0), "model.0.weight", "values differ", (2, 1)),
        (lambda s: s["model.0.bias"].__setitem__(1, 0.0), "model.0.bias", "values differ", (1,)),
        (lambda s: s.pop("optim.state.0.weight.exp_avg"), "optim.state.0.weight.exp_avg", "missing after load", None),
        (lambda s: s.update({"model.extra": torch.ones(1)}), "model.extra", "not in the saved state", None),
        (lambda s: s.update({"model.0.weight": s["model.0.weight"].double()}), "model.0.weight", "dtype differs", None),
        (
            lambda s: s.update({"model.0.weight": s["model.0.weight"].reshape(4, 3)}),
            "model.0.weight",
            "shape differs",
            None,
        ),
        (
            lambda s: s.update({"optim.state.0.weight.step": torch.tensor(0.0)}),
            "optim.state.0.weight.step",
            "values differ",
            (),
        ),
        (
            lambda s: s.update({"optim.param_groups.0.weight.lr": 0.1}),
            "optim.param_groups.0.weight.lr",
            "value differs",
            None,
        ),
        (
            lambda s: s.update({"optim.param_groups.0.weight.lr": torch.tensor(0.01)}),
            "optim.param_groups.0.weight.lr",
            "tensor versus non-tensor",
            None,
        ),
    ],
)
def test_each_kind_of_wrong_state_is_reported(edit, key, detail, index):
    found = compare_state(_state(), _wrong(edit), rank=2)
    assert [m.key for m in found] == [key]
    assert found[0].detail == detail
    assert found[0].index == index
    assert found[0].rank == 2


def _kind(want, got, key="model.0.weight", **extra):
    (mismatch,) = [m for m in compare_state({key: want, **extra}, {key: got, **extra}, rank=0) if m.key == key]
    return mismatch.detail.split(": ", 1)[1] if ": " in mismatch.detail else ""


def test_the_kind_of_difference_names_the_mechanism():
    saved = torch.arange(1.0, 7.0).reshape(2, 3)
    fresh = torch.full((2, 3), -5.0)
    # Never loaded, wholly or in part (one rank's shard dropped).
    (whole,) = compare_state({"model.w": saved}, {"model.w": fresh.clone()}, rank=0, before={"model.w": fresh})
    assert whole.detail == "values differ: holds its value from before the load"
    part = saved.clone()
    part[1] = fresh[1]
    (partly,) = compare_state({"model.w": saved}, {"model.w": part}, rank=0, before={"model.w": fresh})
    assert partly.detail == "values differ: holds its value from before the load"  # in part: the same mechanism
    # A mix-up: another parameter's state of the same name, or another state of the same parameter.
    moments = {
        "optim.state.a.exp_avg": torch.tensor([1.0, 2.0]),
        "optim.state.b.exp_avg": torch.tensor([3.0, 4.0]),
        "optim.state.a.exp_avg_sq": torch.tensor([5.0, 6.0]),
        "optim.state.a.step": torch.tensor(3.0),
        "optim.state.b.step": torch.tensor(0.0),
    }
    reset = {**moments, "optim.state.a.step": torch.tensor(0.0)}  # one equal value is no mix-up
    assert compare_state(moments, reset, rank=0)[0].detail == "values differ"
    swapped = {**moments, "optim.state.a.exp_avg": moments["optim.state.b.exp_avg"]}
    assert compare_state(moments, swapped, rank=0)[0].detail == "values differ: holds another parameter's saved values"
    mixed = {**moments, "optim.state.a.exp_avg": moments["optim.state.a.exp_avg_sq"]}
    assert compare_state(moments, mixed, rank=0)[0].detail == "values differ: holds another entry's saved values"
    # A layout error, a downcast, one corrupted element, anything else.
    assert _kind(saved, saved.t().contiguous().reshape(2, 3)) == "the saved values in other places"
    trained = torch.tensor([1.2345, -2.3456, 3.4567])
    assert _kind(trained, trained.to(torch.bfloat16).float()) == "within bfloat16 rounding"
    one = saved.clone()
    one[0, 0] += 1
    assert _kind(saved, one) == _kind(saved, saved * 3) == ""  # no mechanism recognised: plain "values differ"


def test_swapped_moments_are_caught():
    want = {"optim.state.a.exp_avg": torch.tensor([1.0, 2.0]), "optim.state.b.exp_avg": torch.tensor([3.0, 4.0])}
    got = {
        "optim.state.a.exp_avg": want["optim.state.b.exp_avg"],
        "optim.state.b.exp_avg": want["optim.state.a.exp_avg"],
    }
    assert len(compare_state(want, got, rank=0)) == 2


def test_ignore_frozen_params_wants_the_frozen_parameter_untouched_and_the_rest_loaded():
    """``ignore_frozen_params``: the kept (frozen) key must hold the load side's own value from
    before the load; a loader that restores it anyway, or skips a trainable key, is caught."""
    saved, before = _state(), _state()
    before["model.0.weight"] = before["model.0.weight"] + 1  # the load side's own frozen weight
    before["model.0.bias"] = torch.zeros(3)
    kept = ["model.0.weight"]
    expected = expected_after_load(saved, before, kept)
    right = {**saved, "model.0.weight": before["model.0.weight"]}
    assert compare_state(expected, right, rank=0) == []
    restored_anyway = _state()  # the frozen weight overwritten with the saved one
    assert [m.key for m in compare_state(expected, restored_anyway, rank=0)] == ["model.0.weight"]
    skipped_trainable = {**right, "model.0.bias": before["model.0.bias"]}
    assert [m.key for m in compare_state(expected, skipped_trainable, rank=0)] == ["model.0.bias"]
    assert expected_after_load(saved, before, []) == saved


def test_first_bit_difference_finds_the_first_index_in_row_major_order():
    a = torch.zeros(2, 3, dtype=torch.bfloat16)
    b = a.clone()
    b[1, 0] = 1
    b[1, 2] = 1
    assert first_bit_difference(a, b) == (1, 0)
    assert first_bit_difference(a, a.clone()) is None
    assert first_bit_difference(torch.arange(4), torch.arange(4)) is None


def test_signature_ignores_module_path_numbers_and_paths():
    deep = Verdict("mismatch", (Mismatch("state-equal", "optim.state.0.1.a.weight.exp_avg", 0, "values differ"),))
    shallow = Verdict("mismatch", (Mismatch("state-equal", "optim.state.2.weight.exp_avg", 0, "values differ"),))
    assert deep.signature() == shallow.signature()
    assert (
        normalise_message("Traceback\nKeyError: 'param_groups.0.params.3' in /tmp/x/y.py at 0x7f00")
        == "KeyError: 'param_groups.<n>.params.<n>' in <path> at <addr>"
    )
    # FSDP names the parameter and module it tripped on: a deeper tree is still the same bug.
    in_a_block = (
        "AssertionError: FSDP assumes 0.a.weight is in the state_dict but the state_dict only has "
        "odict_keys(['0.b.weight']). prefix=, module_name=0.a., param_name=weight rank=1."
    )
    flat = (
        "AssertionError: FSDP assumes 0.weight is in the state_dict but the state_dict only has "
        "odict_keys(['1.weight']). prefix=, module_name=0., param_name=weight rank=0."
    )
    assert normalise_message(in_a_block) == normalise_message(flat)
    assert "<fqn>" in normalise_message(flat) and "bn.running_mean" not in normalise_message(
        "KeyError: 'model.bn.running_mean'"
    )


def _mismatch(key, detail="values differ", oracle="complete-state"):
    return Verdict("mismatch", (Mismatch(oracle, key, 0, detail),))


def _error(message, kind="KeyError", phase="load"):
    return Verdict("error", errors=(RankError(0, phase, kind, message),))


#: (one bug seen two ways: one signature) and (two bugs: two signatures).
SAME_BUG = [
    (_mismatch("optim.param_groups.0.lr", "value differs"), _mismatch("optim.param_groups.1.betas", "value differs")),
    (
        _mismatch("optim.state.0.weight.step", "missing after load"),
        _mismatch("optim.state.1.weight.momentum_buffer", "missing after load"),
    ),
    (_mismatch("0.weight", "placements differ", "layout"), _mismatch("block.1.weight", "placements differ", "layout")),
    (
        _error("RuntimeError: Missing key in checkpoint state_dict: optim.param_groups.", "CheckpointException"),
        _error("RuntimeError: Missing key in checkpoint state_dict: optimizer.param_groups.", "CheckpointException"),
    ),
    (
        _error("RuntimeError: Missing key in checkpoint state_dict: optim.", "CheckpointException"),
        _error("RuntimeError: Missing key in checkpoint state_dict: optimizer.", "CheckpointException"),
    ),
    (_error("'0.weight.lr'"), _error("'1.bias.lr'")),
]
OTHER_BUGS = [
    (_mismatch("optim.state.0.weight.exp_avg"), _mismatch("optim.state.0.weight.exp_avg_sq")),
    (_mismatch("optim.state.0.weight.step"), _mismatch("optim.state.0.weight.exp_avg")),
    (_mismatch("model.0.weight"), _mismatch("model.0.running_mean")),
    (_mismatch("optim.state.0.weight.step", "missing after load"), _mismatch("model.0.weight", "missing after load")),
    (_mismatch("optim.param_groups.0.lr", "value differs"), _mismatch("optim.state.0.weight.step", "value differs")),
    (_error("'state'"), _error("'param_groups'")),
    (
        _error("RuntimeError: Missing key in checkpoint state_dict: optim.", "CheckpointException"),
        _error("RuntimeError: Missing key in checkpoint state_dict: optim.param_groups.", "CheckpointException"),
    ),
]


@pytest.mark.parametrize("one, other", SAME_BUG)
def test_one_bug_seen_two_ways_has_one_signature(one, other):
    assert one.signature() == other.signature()
    assert canonical_signature(one.signature()) == one.signature()  # idempotent


@pytest.mark.parametrize("one, other", OTHER_BUGS)
def test_two_bugs_keep_two_signatures(one, other):
    assert one.signature() != other.signature()


def test_signatures_stored_by_an_older_shardfuzz_load_in_the_canonical_form():
    assert (
        canonical_signature("error:load:KeyError:'<fqn>.weight.lr'")
        == canonical_signature("error:load:KeyError:'<fqn>.bias.lr'")
        == _error("'0.weight.lr'").signature()
    )
    assert (
        canonical_signature("mismatch:complete-state:optim.state.*.step:missing after load")
        == _mismatch("optim.state.3.weight.sum", "missing after load").signature()
    )


def test_a_quoted_list_of_parameter_names_is_one_signature_whatever_its_length():
    # FSDP1's "<fqn> is not in the optimizer state. The FSDPParamInfo has the param keys [...]": one per model size.
    two = _error("'0.weight' is not in it; keys ['0.weight', '1.weight'] vs ['1.weight']").signature()
    four = _error("'a.weight' is not in it; keys ['a.weight', 'b.weight', 'd.bias', 'd.weight'] vs ['b.weight']")
    assert two == four.signature() == canonical_signature(two)
    assert _error("parameter '0.weight' in checkpoint").signature() != two
    # The last line of a message that prints tensors pads its columns by the numbers' widths.
    padded = _error("  -8.3e-05,  5.7e-05]])], and names ['a.weight']").signature()
    assert padded == _error("  7.4e-10, 3.2e-10]])], and names ['a.weight', 'b.weight']").signature()


# --- the other oracles: each fails on a concrete wrong input, passes on the right one ----

from shardfuzz.rank import oracles  # noqa: E402
from shardfuzz.rank.oracles import LayoutRecord  # noqa: E402


def test_non_vacuity_lists_only_tensors_that_already_matched():
    saved = _state()
    before = _state()
    before["model.0.weight"] = before["model.0.weight"] + 1  # the load has work to do here
    assert oracles.unchanged_before_load(saved, before) == [
        "model.0.bias",
        "optim.state.0.weight.exp_avg",
        "optim.state.0.weight.step",
    ]
    assert "optim.param_groups.0.weight.lr" not in oracles.unchanged_before_load(saved, saved)


def test_continuation_is_bitwise_when_sharding_is_identical_and_tolerant_otherwise():
    after = {"model.0.weight": torch.tensor([1.0, 2.0])}
    one_ulp = {"model.0.weight": torch.nextafter(after["model.0.weight"], torch.tensor(3.0))}
    assert oracles.continuation(after, after, rank=0, identical_layout=True) == []
    (mismatch,) = oracles.continuation(after, one_ulp, rank=0, identical_layout=True)
    assert mismatch.oracle == "continuation" and mismatch.index == (0,)
    assert oracles.continuation(after, one_ulp, rank=0, identical_layout=False) == []  # reduction order
    wrong = {"model.0.weight": torch.tensor([1.0, 2.001])}
    (mismatch,) = oracles.continuation(after, wrong, rank=0, identical_layout=False)
    assert "beyond rtol" in mismatch.detail and mismatch.index == (1,)


def test_continuation_in_bfloat16_is_bitwise_where_layouts_match_and_skipped_where_they_differ():
    after = {"model.0.weight": torch.tensor([1.0, 2.0], dtype=torch.bfloat16)}
    one_ulp = {"model.0.weight": torch.nextafter(after["model.0.weight"], torch.tensor(3.0, dtype=torch.bfloat16))}
    (mismatch,) = oracles.continuation(after, one_ulp, rank=0, identical_layout=True, dtype="bfloat16")
    assert mismatch.index == (0,)
    # one bfloat16 rounding is 2**-8: no tolerance tells it from a fault, so nothing is compared
    assert oracles.continuation(after, one_ulp, rank=0, identical_layout=False, dtype="bfloat16") == []


RIGHT = LayoutRecord(2, "(Shard(dim=0),)", (4, 3), "torch.float32")


@pytest.mark.parametrize(
    "got, detail",
    [
        ({"w": attrs.evolve(RIGHT, placements="(Shard(dim=1),)")}, "placements differs"),
        ({"w": attrs.evolve(RIGHT, placements="(Replicate(),)")}, "placements differs"),
        ({"w": attrs.evolve(RIGHT, mesh_size=1)}, "mesh_size differs"),
        ({"w": attrs.evolve(RIGHT, shape=(3, 4))}, "shape differs"),
        ({"w": attrs.evolve(RIGHT, dtype="torch.bfloat16")}, "dtype differs"),
        ({}, "not a DTensor after load"),
    ],
)
def test_layout_fails_on_each_changed_field(got, detail):
    assert oracles.layout({"w": RIGHT}, {"w": RIGHT}, rank=1) == []
    (mismatch,) = oracles.layout(got, {"w": RIGHT}, rank=1)
    assert (mismatch.oracle, mismatch.detail, mismatch.rank) == ("layout", detail, 1)


def test_api_parity_names_the_pair_of_apis():
    assert oracles.api_parity(_state(), _state(), rank=0, what="a vs b") == []
    swapped = _state()
    swapped["optim.state.0.weight.exp_avg"] = torch.full((3, 4), 7.0)
    (mismatch,) = oracles.api_parity(_state(), swapped, rank=0, what="a vs b")
    assert mismatch.oracle == "api-parity" and mismatch.detail.startswith("a vs b: values differ")


def test_full_offload_wants_everything_on_rank_zero_on_cpu_and_nothing_elsewhere():
    shapes = {"model.w": (4, 3), "optim.state.w.step": ()}
    right = {"model.w": ((4, 3), "cpu"), "optim.state.w.step": ((), "cpu")}
    assert oracles.full_offload(right, shapes, rank=0) == []
    assert oracles.full_offload({}, shapes, rank=1) == []
    assert [m.detail for m in oracles.full_offload({"model.w": ((4, 3), "cpu")}, shapes, rank=0)] == [
        "missing on rank 0"
    ]
    assert [m.detail for m in oracles.full_offload({**right, "model.w": ((2, 3), "cpu")}, shapes, rank=0)] == [
        "not full-shaped"
    ]
    assert [m.detail for m in oracles.full_offload({**right, "model.w": ((4, 3), "cuda")}, shapes, rank=0)] == [
        "not offloaded to CPU"
    ]
    assert [m.detail for m in oracles.full_offload(right, shapes, rank=1)] == ["a rank other than 0 holds state"]


def test_an_incompatible_load_must_raise():
    assert oracles.loud_incompatible_load("wider", "ValueError: Size mismatch", rank=0) == []
    (mismatch,) = oracles.loud_incompatible_load("extra-layer", None, rank=0)
    assert mismatch.oracle == "loud-incompatible-load" and "raised nothing" in mismatch.detail


# --- replica-consistency: every rank's copy of a replicated value ---------------------------


def _replicas(**by_rank):
    return {int(rank[1:]): pieces for rank, pieces in by_rank.items()}


def test_replicas_that_agree_pass_and_one_stale_replica_is_named():
    step = torch.tensor(3.0)
    agree = _replicas(
        r0={("optim.state.0.weight.step", "whole"): step}, r1={("optim.state.0.weight.step", "whole"): step.clone()}
    )
    assert replica_consistency(agree) == []
    stale = _replicas(
        r0={("optim.state.0.weight.step", "whole"): step},
        r1={("optim.state.0.weight.step", "whole"): torch.tensor(0.0)},
        r2={("optim.state.0.weight.step", "whole"): step.clone()},
    )
    (mismatch,) = replica_consistency(stale)
    assert (mismatch.oracle, mismatch.rank, mismatch.key) == ("replica-consistency", 1, "optim.state.0.weight.step")
    assert "rank 0's copy" in mismatch.detail and mismatch.expected == "3.0" and mismatch.actual == "0.0"


def test_only_copies_of_the_same_region_are_compared():
    # Two shards of one parameter differ, as shards do; their replicas on the other mesh row agree.
    shard = {0: torch.zeros(2), 1: torch.ones(2)}
    pieces = _replicas(
        r0={("model.0.weight", "mesh coordinate 1=0"): shard[0]},
        r1={("model.0.weight", "mesh coordinate 1=1"): shard[1]},
        r2={("model.0.weight", "mesh coordinate 1=0"): shard[0].clone()},
        r3={("model.0.weight", "mesh coordinate 1=1"): shard[1].clone()},
    )
    assert replica_consistency(pieces) == []
    pieces[3]["model.0.weight", "mesh coordinate 1=1"] = torch.tensor([1.0, -0.0])  # one bit: -0.0 vs 1.0
    (mismatch,) = replica_consistency(pieces)
    assert mismatch.rank == 3 and mismatch.index == (1,)


def test_a_replica_that_is_missing_a_value_or_holds_another_hyperparameter_is_a_mismatch():
    pieces = _replicas(
        r0={("optim.param_groups.0.weight.lr", "whole"): 0.1}, r1={("optim.param_groups.0.weight.lr", "whole"): 0.2}
    )
    (mismatch,) = replica_consistency(pieces)
    assert mismatch.detail.endswith("value differs")
    assert Verdict("mismatch", (mismatch,)).signature().startswith("mismatch:replica-consistency:optim.param_groups.*")


def test_continuation_across_layouts_gives_an_adaptive_optimizer_lr_sized_slack_on_parameters_only():
    """A mathematically zero gradient (a bias before a BatchNorm) is noise that Adam turns into an lr-sized
    step, differently on another number of ranks (triaged from empty-corpus findings): not a checkpoint bug."""
    saved = {"model.0.bias": torch.tensor([-0.006516]), "optim.state.0.bias.step": torch.tensor(2.0)}
    noisy = {"model.0.bias": torch.tensor([-0.006577]), "optim.state.0.bias.step": torch.tensor(2.0)}
    assert oracles.continuation(saved, noisy, rank=0, identical_layout=False)  # SGD-sized tolerance: reported
    assert oracles.continuation(saved, noisy, rank=0, identical_layout=False, adaptive_lr=0.01) == []
    assert oracles.continuation(saved, noisy, rank=0, identical_layout=True, adaptive_lr=0.01)  # same layout: exact
    shared_step = {**noisy, "optim.state.0.bias.step": torch.tensor(19.0)}  # StepTensorsShared, 3544da82
    (mismatch,) = oracles.continuation(saved, shared_step, rank=0, identical_layout=False, adaptive_lr=0.01)
    assert mismatch.key == "optim.state.0.bias.step"
    far = {**noisy, "model.0.bias": torch.tensor([0.5])}  # more than two lr-sized steps away: still a finding
    assert oracles.continuation(saved, far, rank=0, identical_layout=False, adaptive_lr=0.01)


def test_an_adaptive_optimizers_normalised_momentum_gets_noise_slack_across_layouts_only():
    """RMSprop's momentum_buffer of a bias whose true gradient is zero (a key projection's) holds g / sqrt(v)
    of rounding noise: 0.0036 on one rank, 0.0124 on three. Across layouts that is slack; on an identical
    layout, or as a raw moment (no noise_step), it is still a mismatch."""
    key = "optim.state.2.in_proj_bias.momentum_buffer"
    expected, actual = {key: torch.tensor([0.0036])}, {key: torch.tensor([0.0124])}
    assert oracles.continuation(expected, actual, rank=0, identical_layout=False, noise_step=10.0) == []
    assert oracles.continuation(expected, actual, rank=0, identical_layout=False)  # no adaptive optimizer
    assert oracles.continuation(expected, actual, rank=0, identical_layout=True, noise_step=10.0)
    moment = "optim.state.2.in_proj_bias.exp_avg"
    assert oracles.continuation(
        {moment: expected[key]}, {moment: actual[key]}, rank=0, identical_layout=False, noise_step=10.0
    )


def test_fsdp1s_differing_state_types_message_is_one_form_whichever_state_it_names_first():
    # FSDP1 names the first state of a set: 'step' (one line) in one process, 'exp_avg' (a tensor whose repr leaves
    # only the message's tail on its last line) in another; corpus 48b712cb's replay met both.
    tail = "error:load:ValueError:         <n>e-<n>, <n>e-<n>]])], and unflattened parameter names [<fqn>...]"
    whole = (
        "error:load:ValueError:Differing optimizer state types for state step, values [{}, tensor(<n>.), "
        "tensor(<n>.), tensor(<n>.), tensor(<n>.), tensor(<n>.), tensor(<n>.), tensor(<n>.), te"
    )
    assert canonical_signature(tail) == canonical_signature(whole)
    assert canonical_signature(canonical_signature(tail)) == canonical_signature(tail)


def test_a_pipeline_stages_layout_is_its_own_parameters_sharded_across_dp_and_no_others():
    """What the layout oracle wants of a pipelined side (``sharded_checks._pipeline_layout``): on a (2, 2) mesh with
    FSDP2 in each stage, stage 0 (ranks 0 and 1) holds the first two root children's parameters, each ``Shard(0)``
    across its 2 dp ranks, stage 1 the last child's; a parameter of another stage, or one left whole, is a mismatch.
    Without FSDP2 no parameter is a DTensor."""
    from shardfuzz.case import PP, Linear, Model, Sequential, Side
    from shardfuzz.rank.sharded_checks import _pipeline_layout

    model = Model(3, Sequential([Linear(4), Linear(2, bias=False), Linear(5)]))
    side = Side(PP(fsdp=True), (2, 2))
    first, second = _pipeline_layout(model, side, 1), _pipeline_layout(model, side, 2)
    assert sorted(first) == ["0.bias", "0.weight", "1.weight"] and sorted(second) == ["2.bias", "2.weight"]
    assert first["0.weight"] == LayoutRecord(2, "(Shard(dim=0),)", (4, 3), "torch.float32")
    held = {**first, "2.weight": second["2.weight"]}  # a stage that kept a layer of the next one
    assert [m.key for m in oracles.layout(held, first, rank=1)] == ["2.weight"]
    whole = {k: v for k, v in first.items() if k != "1.weight"}  # a parameter FSDP2 left unsharded
    assert [m.detail for m in oracles.layout(whole, first, rank=1)] == ["not a DTensor after load"]
    assert _pipeline_layout(model, Side(PP(), (3, 1)), 2) == {}
    # tensor parallelism inside the stages, (pp, tp) = (2, 2): a stage's planned Linears on tp, none of the other's
    inside = Side(PP(plan=(("0", "colwise"), ("2", "rowwise"))), (2, 2))
    first, second = _pipeline_layout(model, inside, 1), _pipeline_layout(model, inside, 2)
    assert sorted(first) == ["0.bias", "0.weight"] and sorted(second) == ["2.bias", "2.weight"]
    assert first["0.weight"] == LayoutRecord(2, "(Shard(dim=0),)", (4, 3), "torch.float32")
    assert second["2.weight"] == LayoutRecord(2, "(Shard(dim=1),)", (5, 2), "torch.float32")
    assert second["2.bias"] == LayoutRecord(2, "(Replicate(),)", (5,), "torch.float32")
    first_only = Side(PP(plan=(("0", "colwise"),)), (2, 2))  # the second stage splits nothing (run O's finding)
    assert sorted(_pipeline_layout(model, first_only, 1)) == ["0.bias", "0.weight"]
    assert _pipeline_layout(model, first_only, 2) == {}
