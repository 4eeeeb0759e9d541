"""The float64 referee: continuation mismatches that are float32 rounding pass; faults still fail."""

import attrs
import pytest

from shardfuzz.case import LowBitAdamW, from_dict
from shardfuzz.executor.referee import ROUNDING_REACH, in_float64, is_refereed, refereed, rounding_suspect
from shardfuzz.findings.corpus import KnownBugs
from shardfuzz.verdict import Mismatch, Verdict


def _tp_load(style_of: tuple[str, str], state_dict: str, reshard: bool) -> dict:
    engine = {"fsdp": False, "kind": "TP", "plan": [list(style_of)], "reshard_after_forward": reshard}
    return {"engine": engine, "mesh_shape": [1, 2], "state_dict": state_dict, "wrap": []}


def _model(input_width: int, num_embeddings: int, last_block: list) -> dict:
    """An Embedding, a Conv, and ``last_block`` (a Sequential ending in a BatchNorm)."""
    first = [
        {"kind": "Embedding", "num_embeddings": num_embeddings},
        {"bias": False, "dims": 1, "kernel_size": 1, "kind": "Conv"},
    ]
    block = {"children": [*last_block, {"kind": "BatchNorm"}], "kind": "Sequential"}
    return {"input_width": input_width, "root": {"children": [*first, block], "kind": "Sequential"}}


# Two 600 s runs' findings (docs/measurements.md, eleventh session): deterministic in float32, pass in float64.
# SGD with momentum carries a final BatchNorm's bias, whose gradient is 2x the bias (0 at its initial 0), to
# noise that a row-wise tensor-parallel reduction makes 1.07e-6 where one rank makes 2.4e-8.
SGD_FINAL_BATCHNORM_BIAS = {
    "batch_size": 2,
    "checks": ["continuation"],
    "flatten_optimizer_state_dict": True,
    "load": _tp_load(("2.0", "rowwise"), "sharded", reshard=False),
    "load_mutation": None,
    "model": _model(3, 1, [{"bias": False, "kind": "Linear", "out_features": 2}]),
    "optimizer": {"kind": "SGD", "lr": 0.1, "momentum": 0.9},
    "param_groups": 1,
    "save": {"engine": {"kind": "DDP"}, "mesh_shape": [1], "state_dict": "sharded", "wrap": []},
    "schema_version": 1,
    "seed": 0,
    "steps": 0,
}

# AdamW turns a Linear bias's zero gradient (before a BatchNorm) into +lr on one layout and -lr on the other;
# the final BatchNorm bias's exp_avg then differs: -1.1e-7 against -2.0e-4.
ADAMW_SIGN_FORK = {
    **SGD_FINAL_BATCHNORM_BIAS,
    "flatten_optimizer_state_dict": False,
    "load": _tp_load(("2.1", "colwise"), "full", reshard=True),
    "model": _model(1, 4, [{"bias": True, "kind": "Tied"}, {"bias": True, "kind": "Linear", "out_features": 2}]),
    "optimizer": {"kind": "AdamW", "lr": 0.01, "weight_decay": 0.01},
    "param_groups": 2,
    "seed": 16394,
}


def _case(**changes):
    return attrs.evolve(from_dict(SGD_FINAL_BATCHNORM_BIAS), **changes)


def _mismatch(oracle="continuation", detail="differs beyond rtol=0.0001, atol=1e-06", expected="1e-08", actual="1e-06"):
    return Mismatch(oracle, "model.2.1.bias", 0, detail, index=(1,), expected=expected, actual=actual)


def _verdict(*mismatches, status="mismatch"):
    return Verdict(status, mismatches=mismatches)


@pytest.mark.parametrize(
    "verdict, suspect",
    [
        (_verdict(_mismatch()), True),
        (_verdict(_mismatch(), _mismatch(expected="0.3", actual="0.1")), True),
        (_verdict(_mismatch(detail="values differ")), False),  # bit-exact: identical layouts, any dtype
        (_verdict(_mismatch(oracle="complete-state")), False),  # state right after the load: no training
        (_verdict(_mismatch(), _mismatch(oracle="complete-state")), False),
        (_verdict(_mismatch(expected="-2934429.0", actual="-249.2")), False),  # beyond ROUNDING_REACH
        (_verdict(_mismatch(expected="", actual="")), False),
        (_verdict(status="pass"), False),
        (Verdict("error"), False),
    ],
)
def test_only_continuation_tolerance_mismatches_within_reach_are_suspects(verdict, suspect):
    assert rounding_suspect(_case(), verdict) is suspect


def test_a_case_that_computes_in_bfloat16_is_no_suspect():
    bfloat16 = _case(model=attrs.evolve(_case().model, dtype="bfloat16"))
    assert not rounding_suspect(bfloat16, _verdict(_mismatch()))


def test_the_reach_admits_a_few_learning_rates():
    assert ROUNDING_REACH >= 2 * 2 * 0.1  # two layouts forking both ways over 2 steps of lr 0.1


def test_float64_form_keeps_the_case_but_the_dtype():
    case = _case()
    wider = in_float64(case)
    assert wider is not None and wider.model.dtype == "float64"
    assert attrs.evolve(wider, model=case.model) == case


def test_a_low_bit_optimizer_has_no_float64_form():
    assert in_float64(_case(optimizer=LowBitAdamW())) is None


def test_a_suspect_whose_float64_form_passes_is_a_pass_that_says_why():
    ran = []
    first = attrs.evolve(_verdict(_mismatch()), unchanged=("model.0.weight",))
    verdict = refereed(_case(), first, lambda case: ran.append(case) or Verdict("pass", seconds=1.0))
    assert verdict.ok and "float32 rounding" in verdict.detail and "model.2.1.bias" in verdict.detail
    assert verdict.unchanged == ("model.0.weight",)
    assert [c.model.dtype for c in ran] == ["float64"]


@pytest.mark.parametrize("again", [_verdict(_mismatch()), Verdict("error"), Verdict("hang")])
def test_a_suspect_that_fails_again_in_float64_keeps_its_float32_verdict(again):
    first = _verdict(_mismatch())
    assert refereed(_case(), first, lambda case: again) is first


def test_a_verdict_that_is_no_suspect_is_not_run_again():
    first = _verdict(_mismatch(detail="values differ"))
    assert refereed(_case(), first, lambda case: pytest.fail("ran again")) is first


@pytest.mark.parametrize("case", [SGD_FINAL_BATCHNORM_BIAS, ADAMW_SIGN_FORK], ids=["sgd-batchnorm", "adamw-fork"])
def test_the_found_false_positives_pass_on_real_ranks(shardfuzz_pool, case):
    # Refereed where this CPU's float32 run differs (the machine that found them); on others (an AMD EPYC with
    # AVX-512, 2026-12-06) their float32 runs agree outright: the rounding is the machine's (its kernels', presumably).
    verdict = shardfuzz_pool.run(from_dict(case))
    assert verdict.ok, verdict.summary()


# Two Linears, DDP saving and FSDP2 loading on 2 ranks, two steps, then continuation's steps.
PLAIN_ACROSS_LAYOUTS = {
    **SGD_FINAL_BATCHNORM_BIAS,
    "load": {"engine": {"kind": "FSDP2"}, "mesh_shape": [2], "state_dict": "sharded", "wrap": []},
    "model": {
        "input_width": 4,
        "root": {
            "children": [{"kind": "Linear", "out_features": 8}, {"kind": "Linear", "out_features": 4}],
            "kind": "Sequential",
        },
    },
    "save": {"engine": {"kind": "DDP"}, "mesh_shape": [2], "state_dict": "sharded", "wrap": []},
    "steps": 2,
}


@pytest.mark.parametrize("optimizer", [{"kind": "Adam", "lr": 0.01}, {"kind": "SGD", "lr": 0.1, "momentum": 0.9}])
def test_rounding_sized_noise_after_the_load_is_refereed_to_a_pass_on_real_ranks(optimizer):
    from shardfuzz.executor import RankPool

    case = from_dict({**PLAIN_ACROSS_LAYOUTS, "optimizer": optimizer})
    with RankPool(2, target="shardfuzz.targets.controls:RoundingNoiseAfterLoad") as pool:
        verdict = pool.run(case)
    assert is_refereed(verdict), verdict.summary()  # float32 differed (by rounding), float64 passed


# A fault that only continuation sees, across layouts, through the referee: the forgotten rotary table of
# test_model_construction.py (RotaryTableLeftEmpty, DDP saving, FSDP2 loading) still fails, in float64 too.


def test_a_refereed_pass_is_counted_and_said_in_the_report_headline():
    from shardfuzz.findings.campaign_result import CampaignResult
    from shardfuzz.findings.render import headline
    from shardfuzz.findings.run_report import campaign_report, merge_reports

    result = CampaignResult()
    passed = refereed(_case(), _verdict(_mismatch()), lambda case: Verdict("pass"))
    for verdict in (passed, Verdict("pass"), passed):
        result.record(_case(), verdict)
    assert (result.passed, result.refereed) == (3, 2)
    report = campaign_report(result, meta={"torch": "x"}, known=KnownBugs(), corpus_files={})
    assert report["refereed"] == 2
    assert "(2 of them float32 rounding, passing in float64)" in headline(report)
    assert merge_reports([report, report], meta={})["refereed"] == 4
