"""Strategy arguments are checked up front, and every offered value of every dimension is reachable."""

from collections import Counter, defaultdict

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import InvalidArgument

from shardfuzz import strategies as sf
from shardfuzz.case import dimensions, shard_count


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
        (sf.engines, {"names": ["ddp2"]}),
        (sf.engines, {"names": ["ddp"], "mesh_dims": 2}),
        (sf.engines, {"mesh_dims": 0}),
        (sf.mesh_shapes, {"max_dims": 3}),
        (sf.offered_values, {"max_world_size": 0}),
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
    from shardfuzz.case import LOW_BIT_WIDTH, LowBitAdamW

    @settings(max_examples=200, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(sf.cases(max_world_size=2, max_width=3, max_steps=1, max_leaves=2))
    def check(case):
        assert case.world_size <= 2
        assert case.steps <= 1
        linears = case.model.linears()
        if isinstance(case.optimizer, LowBitAdamW):  # one Linear beyond the bounds, which torchao quantises
            assert linears[-1][2] == LOW_BIT_WIDTH
            linears = linears[:-1]
        assert len(linears) <= 2
        assert all(out <= 3 for _, _, out, _ in linears)

    check()


def test_weights_are_honoured_where_one_of_would_drop_a_repeated_branch():
    """``st.one_of(a, a, b)`` draws ``a`` half the time (it drops the repeat, and Hypothesis caches strategies built
    from hashable arguments, so two calls give one object); ``weighted`` draws it as weighted. A weight below 1 is
    refused up front."""
    from hypothesis import strategies as st

    from shardfuzz.strategies._helpers import weighted

    a, b = st.just("a"), st.just("b")
    assert len(st.one_of(a, a, a, b).branches) == 2  # the trap, as the installed Hypothesis sets it
    drawn: Counter = Counter()

    @settings(max_examples=400, phases=[Phase.generate], database=None, suppress_health_check=list(HealthCheck))
    @given(weighted((3, a), (1, b)))
    def count(value):
        drawn[value] += 1

    count()
    assert drawn["a"] > 2 * drawn["b"] > 0, drawn
    with pytest.raises(InvalidArgument):
        weighted((0, a), (1, b))


def test_wide_roots_are_drawn():
    """About 1 tree in 5 is a flat stack: roots of three children (pipelines of three stages) and four Linears or
    more (two TP styles twice) are not left to chance."""
    wide, many_linears = Counter(), Counter()

    @settings(max_examples=300, phases=[Phase.generate], database=None, suppress_health_check=list(HealthCheck))
    @given(sf.models())
    def count(model):
        wide[len(model.root.children) >= 3] += 1
        many_linears[len(model.linears()) >= 4] += 1

    count()
    assert wide[True] >= 30 and many_linears[True] >= 5, (wide, many_linears)


@pytest.mark.slow
def test_every_offered_value_of_every_dimension_is_reached():
    seen = defaultdict(Counter)
    sharded = Counter()

    @settings(max_examples=3000, phases=[Phase.generate], database=None, suppress_health_check=list(HealthCheck))
    @given(sf.cases())
    def draw(case):
        for name, value in dimensions(case).items():
            seen[name][value] += 1
        if shard_count(case.load) > 1:
            sharded["sides"] += 1
            sharded["uneven"] += dimensions(case)["load_uneven_split"] == "true"
            sharded["empty"] += dimensions(case)["load_empty_shard"] == "true"

    draw()
    # through_save/through_load are a campaign's (the engine and state-dict type that reached the target's
    # code, recorded by campaign_result), not a case's: test_target_support.py checks them.
    expected = {name: values for name, values in sf.offered_values().items() if not name.startswith("through_")}
    assert set(expected) == set(seen), "offered_values() and case.dimensions() name the same dimensions"
    for name, values in expected.items():
        assert values == set(seen[name]), f"{name}: reached {dict(seen[name])}, offered {sorted(values)}"
    # Where a side shards at all, uneven splits and empty shards are common, not rare.
    assert sharded["uneven"] > sharded["sides"] / 3, dict(sharded)
    assert sharded["empty"] > sharded["sides"] / 10, dict(sharded)


def test_no_draw_meets_the_known_fsdp2_tp_gather_hang():
    """FSDP2 + TP with a rowwise split and an empty tp shard hangs in torch (corpus: 11 forms); each new form cost a
    campaign its shrink at 30 s a try, so the strategies draw such a plan without FSDP2."""
    from shardfuzz.case import TP
    from shardfuzz.strategies.sides import _meets_the_tp_gather_hang

    @settings(max_examples=300, phases=[Phase.generate], database=None, suppress_health_check=list(HealthCheck))
    @given(sf.cases(max_world_size=4))
    def check(case):
        for side in (case.save, case.load):
            if isinstance(side.engine, TP) and side.engine.fsdp:
                assert not _meets_the_tp_gather_hang(case.model, side.engine.plan, side.mesh_shape[-1])

    check()
