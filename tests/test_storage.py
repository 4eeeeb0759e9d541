"""Each way of writing and reading a checkpoint, and each new kind of leaf, round-trips on real ranks.

One fixed case per variant, so a variant broken by our own plumbing (not by torch)
fails here by name, before a campaign has to find it.
"""

import pytest

from shardfuzz.capabilities import capabilities
from shardfuzz.case import (
    DDP,
    FSDP1,
    FSDP2,
    Adam,
    AdamW,
    Case,
    Conv,
    Dcp,
    DcpToTorchSave,
    Embedding,
    LayerNorm,
    Linear,
    Model,
    Scale,
    Sequential,
    Side,
    TorchSave,
    Unsharded,
)

pytestmark = pytest.mark.ranks

MODEL = Model(
    3, Sequential([Embedding(5), Conv(dims=1, kernel_size=3), Linear(4), LayerNorm(), Conv(dims=2), Linear(2)])
)


def _offered(label):
    if label not in capabilities().storages:
        pytest.skip(f"storage {label} is off here: {capabilities().off.get(f'storage {label}')}")


@pytest.mark.parametrize(
    "storage, label",
    [
        (Dcp(api="legacy"), "dcp-legacy"),
        (Dcp(api="async", single_file_per_rank=False, thread_count=2, sync_files=False), "dcp-async"),
        (DcpToTorchSave(), "dcp-to-torch-save"),
    ],
    ids=["legacy", "async", "dcp-to-torch-save"],
)
def test_each_dcp_storage_round_trips_a_resharded_model(shardfuzz_pool, storage, label):
    _offered(label)
    case = Case(
        model=MODEL,
        save=Side(FSDP2(), (2,), wrap=("1",)),
        load=Side(FSDP1(), (2,), state_dict="full"),
        optimizer=Adam(),
        steps=2,
        storage=storage,
        checks=("continuation",),
    )
    verdict = shardfuzz_pool.run(case)
    assert verdict.status == "pass", verdict.summary()


def test_a_torch_save_file_of_an_offloaded_full_state_dict_round_trips(shardfuzz_pool):
    case = Case(
        model=MODEL,
        save=Side(FSDP2(), (2,), state_dict="full", cpu_offload=True),
        load=Side(FSDP1(), (2,), state_dict="full"),
        optimizer=AdamW(),
        steps=1,
        storage=TorchSave(),
    )
    verdict = shardfuzz_pool.run(case)
    assert verdict.status == "pass", verdict.summary()


@pytest.mark.parametrize("dtype", ["float64", "bfloat16"])
def test_a_zero_dimensional_parameter_and_another_dtype_round_trip(shardfuzz_pool, dtype):
    case = Case(
        model=Model(2, Sequential([Linear(3), Scale(), Linear(2)]), dtype=dtype),
        save=Side(DDP(), (2,)),
        load=Side(Unsharded(), (1,)),
        optimizer=Adam(),
        steps=2,
        checks=("continuation",),
    )
    verdict = shardfuzz_pool.run(case)
    assert verdict.status == "pass", verdict.summary()


def test_a_scalar_parameter_under_fsdp_is_unsupported_not_a_finding(shardfuzz_pool):
    case = Case(
        model=Model(2, Sequential([Linear(3), Scale()])),
        save=Side(FSDP1(), (2,)),
        load=Side(Unsharded(), (1,)),
        optimizer=Adam(),
    )
    assert shardfuzz_pool.run(case).status == "unsupported"
