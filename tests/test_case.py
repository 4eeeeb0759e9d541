"""The Case is data: exact JSON round-trips, validators, and readable errors for bad input."""

import json

import pytest
from hypothesis import given

from shardfuzz.case import (
    DDP,
    FSDP1,
    FSDP2,
    SCHEMA_VERSION,
    Adam,
    BatchNorm,
    Block,
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
    Tied,
    TorchSave,
    Unsharded,
    dimensions,
    dumps,
    loads,
    to_dict,
)
from shardfuzz.strategies import cases


@given(cases())
def test_json_round_trip_is_exact(case):
    assert loads(dumps(case)) == case
    assert dumps(loads(dumps(case))) == dumps(case)


def _case(**overrides):
    fields = dict(
        model=Model(3, Sequential([Linear(5), Block([Linear(1, bias=False), Sequential([Linear(7)])])])),
        save=Side(FSDP1(), (2,), wrap=["1"]),
        load=Side(FSDP2(), (3,), state_dict="full"),
        optimizer=Adam(),
    )
    fields.update(overrides)
    return Case(**fields)


def test_model_describes_its_layers_and_paths():
    model = _case().model
    assert model.linears() == [("0", 3, 5, True), ("1.a", 5, 1, False), ("1.b.0", 1, 7, True)]
    assert model.submodule_paths() == ["0", "1", "1.a", "1.b", "1.b.0"]
    assert model.depth() == 4


def test_norm_layers_keep_the_width_and_add_one_dimensional_parameters():
    model = Model(3, Block([Linear(4), BatchNorm(), Sequential([LayerNorm(), Linear(2, frozen=True), Linear(1)])]))
    assert model.norms() == [("b", "BatchNorm", 4), ("c.0", "LayerNorm", 4)]
    assert model.linears() == [("a", 3, 4, True), ("c.1", 4, 2, True), ("c.2", 2, 1, True)]
    assert model.parameter_shapes()["b.weight"] == (4,) and model.parameter_shapes()["c.1.weight"] == (2, 4)
    assert model.frozen_paths() == ["c.1"] and model.has_batch_norm and model.output_width == 1
    dims = dimensions(_case(model=model, save=Side(FSDP1(), (2,)), load=Side(FSDP2(), (1,))))
    assert dims["norms"] == "both" and dims["frozen"] == "some"


def test_conv_embedding_and_scale_leaves_bring_three_four_and_zero_dimensional_parameters():
    model = Model(
        3,
        Sequential([Embedding(7), Conv(dims=1, kernel_size=3), Block([Conv(dims=2, bias=False), Scale()]), Linear(2)]),
        dtype="bfloat16",
    )
    assert model.num_embeddings == 7
    assert model.parameter_shapes() == {
        "0.weight": (7, 3),
        "1.weight": (3, 3, 3),
        "1.bias": (3,),
        "2.a.weight": (3, 3, 1, 1),
        "2.b.scale": (),
        "3.weight": (2, 3),
        "3.bias": (2,),
    }
    dims = dimensions(_case(model=model, save=Side(DDP(), (2,)), load=Side(Unsharded(), (1,))))
    assert (dims["conv"], dims["embedding"], dims["scalar_parameter"], dims["dtype"]) == (
        "both",
        "true",
        "true",
        "bfloat16",
    )


def test_a_tied_leaf_has_one_weight_under_two_names_and_matches_the_built_module():
    from shardfuzz.rank.build import build_module

    model = Model(3, Sequential([Linear(4), Tied(), Tied(bias=False)]))
    shapes = model.parameter_shapes()
    assert shapes == {
        "0.weight": (4, 3),
        "0.bias": (4,),
        "1.a.weight": (4, 4),
        "1.a.bias": (4,),
        "1.b.bias": (4,),
        "2.a.weight": (4, 4),
    }
    module = build_module(model, seed=0)
    assert {name: tuple(p.shape) for name, p in module.named_parameters()} == shapes  # deduplicated
    assert module[1].b.weight is module[1].a.weight and "1.b.weight" in module.state_dict()
    assert dimensions(_case(model=model, save=Side(DDP(), (2,)), load=Side(Unsharded(), (1,))))["tied"] == "true"


def test_fields_added_later_stay_out_of_the_json_at_their_defaults():
    data = to_dict(_case())
    assert "dtype" not in data["model"] and "storage" not in data
    assert "cpu_offload" not in data["save"] and "broadcast_from_rank0" not in data["load"]
    data = to_dict(
        _case(
            storage=Dcp(api="async"),
            load=Side(FSDP2(), (3,), state_dict="full", cpu_offload=True, broadcast_from_rank0=True),
        )
    )
    assert data["storage"]["kind"] == "Dcp" and data["load"]["broadcast_from_rank0"] is True


def test_dimensions_label_uneven_and_empty_shards():
    dims = dimensions(_case())
    assert dims["save_engine"] == "fsdp1" and dims["load_engine"] == "fsdp2"
    assert dims["save_uneven_split"] == "true"  # width 5 over 2 ranks
    assert dims["load_empty_shard"] == "true"  # width 1 on 3 ranks
    assert dims["resharded"] == "true"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: _case(save=Side(FSDP1(), (2,), wrap=["9"])), "not in the model"),
        (lambda: _case(steps=-1), "steps"),
        (lambda: Side(FSDP1(), (0,)), "mesh_shape"),
        (lambda: Side(FSDP1(), (2, 2)), "1-D mesh_shape"),
        (lambda: Side(FSDP1(sharding_strategy="HYBRID_SHARD"), (4,)), "2-D mesh_shape"),
        (lambda: Side(FSDP2(), (2, 2, 1)), "one or two"),
        (lambda: Side(DDP(), (2, 2)), "1-D mesh_shape"),
        (lambda: Side(Unsharded(), (2,)), "one rank"),
        (lambda: Side(DDP(), (2,), wrap=["0"]), "does not shard listed modules"),
        (lambda: Side(FSDP1(wrap_policy="always"), (2,), wrap=["0"]), "does not shard listed modules"),
        (lambda: FSDP1(wrap_policy="module-type"), "module_types"),
        (lambda: FSDP1(module_types=["Linear"]), "module_types"),
        (lambda: FSDP1(wrap_policy="module-type", module_types=["Conv"]), "not among"),
        (lambda: FSDP1(wrap_policy="size-based"), "min_num_params"),
        (lambda: FSDP1(sharding_strategy="ZERO"), "sharding_strategy"),
        (lambda: FSDP2(shard_dim=2), "shard_dim"),
        (lambda: _case(param_groups=3), "param_groups"),
        (lambda: Side(FSDP1(), (2,), state_dict="whole"), "state_dict"),
        (lambda: Linear(0), "out_features"),
        (lambda: Sequential([]), "at least one child"),
        (lambda: _case(schema_version=SCHEMA_VERSION + 1), "schema_version"),
        (lambda: Model(2, Sequential([Linear(3, frozen=True)])), "frozen=False"),
        (lambda: Model(2, Sequential([LayerNorm()])), "frozen=False"),
        (lambda: Side(FSDP2(), (1,), device="tpu"), "device"),
        (lambda: _case(model=Model(2, Sequential([Linear(3), BatchNorm()])), batch_size=1), "batch_size >= 2"),
        (lambda: Model(2, Sequential([Linear(3), Embedding(4)])), "first leaf"),
        (lambda: Model(2, Sequential([Linear(3)]), dtype="float16"), "dtype"),
        (lambda: Conv(dims=3), "dims"),
        (lambda: Conv(kernel_size=2), "kernel_size"),
        (lambda: Dcp(api="fast"), "api"),
        (lambda: Dcp(thread_count=0), "thread_count"),
        (lambda: Side(FSDP2(), (2,), broadcast_from_rank0=True), "needs state_dict 'full'"),
        (lambda: Side(FSDP2(), (2,), state_dict_api="both"), "state_dict_api"),
        (lambda: _case(ignore_frozen_params=True, load_mutation="wider"), "load_mutation None"),
        (lambda: Side(FSDP2(), (2,), state_dict="local"), "needs an FSDP1 engine"),
        (lambda: Side(FSDP1(sharding_strategy="HYBRID_SHARD"), (2, 2), state_dict="local"), "non-hybrid"),
        (lambda: _case(save=Side(FSDP1(), (2,), state_dict="local")), "both sides 'local'"),
        (
            lambda: _case(
                model=Model(2, Sequential([Linear(3, frozen=True), Linear(2)])),
                ignore_frozen_params=True,
                checks=["continuation"],
            ),
            "continuation",
        ),
        (lambda: _case(storage=TorchSave()), "both sides need state_dict 'full'"),
        (lambda: _case(storage=DcpToTorchSave(), load=Side(FSDP2(), (3,))), "load side needs state_dict 'full'"),
        (lambda: _case(load=Side(FSDP2(), (3,), state_dict="full", cpu_offload=True)), "broadcast_from_rank0"),
    ],
)
def test_invalid_cases_are_rejected(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(steps=-1), "steps"),
        (lambda d: d.update(zzz=1), "extra fields"),
        (lambda d: d["optimizer"].update(kind="Adamx"), "optimizer"),
        (lambda d: d.pop("model"), "case.model"),
        (lambda d: d.update(schema_version=99), "schema_version 99"),
        (lambda d: d["save"].update(mesh_shape="x"), "save"),
    ],
)
def test_bad_json_names_what_is_wrong(edit, message):
    data = json.loads(dumps(_case()))
    edit(data)
    with pytest.raises(ValueError, match=message):
        loads(json.dumps(data))


def test_the_public_surface_resolves_and_stays_cheap_to_import():
    import subprocess
    import sys

    import shardfuzz

    for name in shardfuzz.__all__:
        assert getattr(shardfuzz, name) is not None, name
    probe = "import sys, shardfuzz; print('hypothesis' in sys.modules, 'torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.split() == [
        "False",
        "False",
    ]
