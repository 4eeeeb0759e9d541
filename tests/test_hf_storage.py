"""DCP's Hugging Face safetensors storage (``HfSafetensors``): a checkpoint of the model alone, sharded or
consolidated, loaded into another layout; the consolidated files read back with ``safetensors`` itself."""

import attrs
import pytest
import torch

from shardfuzz.capabilities import capabilities
from shardfuzz.case import (
    DDP,
    FSDP1,
    FSDP2,
    TP,
    Adam,
    Case,
    HfSafetensors,
    Linear,
    Loop,
    Model,
    Sequential,
    Side,
    TrainingState,
)
from shardfuzz.executor import RankPool
from shardfuzz.findings.describe import describe
from shardfuzz.rank.oracles import CONSOLIDATED_ORACLE, compare_state

pytestmark = pytest.mark.skipif(
    "hf-safetensors-consolidated" not in capabilities().storages,
    reason=capabilities().off.get("storage hf-safetensors-consolidated", ""),
)

BASE = Case(
    model=Model(4, Sequential([Linear(5), Linear(3)])),
    save=Side(FSDP2(), (2,)),
    load=Side(DDP(), (2,)),
    optimizer=Adam(),
    steps=2,
    storage=HfSafetensors(consolidated=True),
)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"training": TrainingState()}, "no training state"),
        ({"load_mutation": "wider"}, "load_mutation"),
        ({"checks": ("continuation",)}, "no continuation check"),
        ({"loop": Loop(resumes=2)}, "one round-trip"),
    ],
)
def test_a_checkpoint_of_the_model_alone_refuses_what_needs_more(changes, message):
    with pytest.raises(ValueError, match=message):
        attrs.evolve(BASE, **changes)


def test_the_consolidated_oracle_names_a_tensor_the_files_hold_wrong():
    saved = {"model.0.weight": torch.arange(6.0).reshape(2, 3), "model.0.bias": torch.zeros(2)}
    shifted = {**saved, "model.0.weight": saved["model.0.weight"].roll(1)}
    (mismatch,) = compare_state(saved, shifted, rank=0, oracle=CONSOLIDATED_ORACLE)
    assert mismatch.oracle == CONSOLIDATED_ORACLE and mismatch.key == "model.0.weight"
    (missing,) = compare_state(saved, {"model.0.weight": saved["model.0.weight"]}, rank=0, oracle=CONSOLIDATED_ORACLE)
    assert missing.key == "model.0.bias"


@pytest.mark.ranks
def test_hf_checkpoints_load_into_other_layouts_and_the_optimizer_stays_as_built():
    cases = [
        BASE,
        attrs.evolve(BASE, storage=HfSafetensors()),
        attrs.evolve(BASE, load=Side(FSDP1(), (2,), state_dict="full")),
        attrs.evolve(BASE, save=Side(TP(plan=[("0", "colwise")]), (1, 2)), load=Side(FSDP2(), (1,))),
        attrs.evolve(BASE, loop=Loop(lenient=True)),
    ]
    with RankPool(2) as pool:
        for case in cases:
            verdict = pool.run(case)
            assert verdict.status == "pass", (describe(case), verdict.signature())
