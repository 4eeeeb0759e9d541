"""Strategy arguments are checked up front, and every offered value of every dimension is reachable."""

from collections import Counter, defaultdict

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import InvalidArgument

from shardfuzz import strategies as sf
from shardfuzz.capabilities import capabilities
from shardfuzz.case import dimensions


@pytest.mark.parametrize(
    "function, kwargs",
    [
        (sf.widths, {"min_value": 0}),
        (sf.widths, {"min_value": 5, "max_value": 4}),
        (sf.widths, {"max_value": 2.5}),
        (sf.linears, {"max_width": 0}),
        (sf.module_trees, {"max_leaves": 0}),
        (sf.module_trees, {"max_children": 0}),
        (sf.world_sizes, {"min_size": 0}),
        (sf.world_sizes, {"min_size": 3, "max_size": 2}),
        (sf.mesh_shapes, {"max_size": True}),
        (sf.optimizer_steps, {"max_steps": -1}),
        (sf.engines, {"names": []}),
        (sf.engines, {"names": ["ddp"]}),
        (sf.cases, {"max_world_size": 0}),
        (sf.cases, {"max_width": 0}),
        (sf.cases, {"engine_names": ["fsdp3"]}),
    ],
)
@pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
def test_invalid_arguments(function, kwargs):
    with pytest.raises(InvalidArgument):
        function(**kwargs).example()


def test_bounds_are_respected():
    @settings(max_examples=200, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(sf.cases(max_world_size=2, max_width=3, max_steps=1, max_leaves=2))
    def check(case):
        assert case.world_size <= 2
        assert case.steps <= 1
        assert len(case.model.linears()) <= 2
        assert all(out <= 3 for _, _, out, _ in case.model.linears())

    check()


def test_every_offered_value_of_every_dimension_is_reached():
    seen = defaultdict(Counter)

    @settings(max_examples=2000, phases=[Phase.generate], database=None,
              suppress_health_check=list(HealthCheck))
    @given(sf.cases())
    def draw(case):
        for name, value in dimensions(case).items():
            seen[name][value] += 1

    draw()
    expected = {
        "save_engine": set(capabilities().engines),
        "load_engine": set(capabilities().engines),
        "save_world_size": {"1", "2", "3", "4"},
        "load_world_size": {"1", "2", "3", "4"},
        "save_state_dict": {"sharded", "full"},
        "load_state_dict": {"sharded", "full"},
        "save_uneven_split": {"true", "false"},
        "load_empty_shard": {"true", "false"},
        "save_wrapped": {"none", "some"},
        "resharded": {"true", "false"},
        "optimizer": {"sgd", "adam", "adamw", "adagrad", "rmsprop"},
        "optimizer_state": {"none", "some"},
        "param_groups": {"1", "2"},
        "steps": {"0", "1", "2", "3"},
        "depth": {"2", "3", "4+"},
        "linears": {"1", "2", "3", "4+"},
        "flatten_optimizer_state_dict": {"true", "false"},
    }
    for name, values in expected.items():
        assert values <= set(seen[name]), f"{name}: reached {dict(seen[name])}, expected all of {values}"
    # Uneven splits and empty shards are common, not rare.
    total = sum(seen["save_engine"].values())
    assert seen["load_uneven_split"]["true"] > total / 4
    assert seen["load_empty_shard"]["true"] > total / 10
