"""FSDP2 mixed precision with BatchNorm: the documented workaround is what the strategies draw."""

import attrs
import pytest
from hypothesis import given, settings

from shardfuzz.case import DDP, FSDP2, AdamW, BatchNorm, Case, Linear, Model, Sequential, Side
from shardfuzz.strategies import cases

pytestmark = pytest.mark.ranks

BATCHNORM = Model(1, Sequential([Linear(1), BatchNorm()]))


def _case(batchnorm_fp32: bool) -> Case:
    load = Side(FSDP2(), (1,), mixed_precision="bf16-params", batchnorm_fp32=batchnorm_fp32)
    return Case(model=BATCHNORM, save=Side(DDP(), (1,)), load=load, optimizer=AdamW(), steps=0, checks=["continuation"])


def test_each_batchnorm_in_its_own_float32_unit_trains_and_round_trips(shardfuzz_pool):
    """Without it FSDP2 hands BatchNorm bfloat16 weights beside float32 running statistics (corpus
    bc943706, a limitation); with it the case passes, so the fuzzer tests the supported way."""
    assert shardfuzz_pool.run(_case(False)).signature() == (
        "error:training:RuntimeError:expected scalar type BFloat1<n> but found Float"
    )
    verdict = shardfuzz_pool.run(_case(True))
    assert verdict.ok, verdict.summary()


def test_batchnorm_fp32_needs_fsdp2_with_bfloat16_parameters():
    with pytest.raises(ValueError, match="batchnorm_fp32 is FSDP2's workaround"):
        Side(FSDP2(), (1,), mixed_precision="bf16-reduce", batchnorm_fp32=True)
    with pytest.raises(ValueError, match="batchnorm_fp32 is FSDP2's workaround"):
        Side(DDP(), (1,), batchnorm_fp32=True)


@settings(max_examples=200, deadline=None)
@given(cases(max_world_size=4))
def test_every_drawn_fsdp2_side_with_bfloat16_parameters_uses_the_workaround(case):
    for side in (case.save, case.load):
        lowered = isinstance(side.engine, FSDP2) and side.mixed_precision in ("bf16", "bf16-params")
        assert side.batchnorm_fp32 == lowered
        assert attrs.evolve(side) == side
