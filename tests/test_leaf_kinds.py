"""Every leaf kind of the registry (``case.LEAF_CLASSES``) is drawn, built, written and described as it says.

These tests read the registry, so a new kind is covered by them without a line here:
its ``parameter_shapes`` must match the module it builds, the exported script's
expression must build the same module value for value, and the strategies must draw it.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from torch import nn

from shardfuzz.case import LEAF_CLASSES, MODULE_TYPES, Leaf, Model, coverage_dimensions, leaves
from shardfuzz.findings.describe import describe
from shardfuzz.findings.export import _model_expr
from shardfuzz.rank.build import MODULE_TYPE_CLASSES, build_module
from shardfuzz.rank.portable import layers
from shardfuzz.strategies import cases, models


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(models(max_leaves=4, max_width=5))
def test_a_model_builds_the_shapes_it_declares_and_the_script_builds_it_alike(model: Model):
    module = build_module(model, seed=3)
    assert {name: tuple(p.shape) for name, p in module.named_parameters()} == model.parameter_shapes()
    torch.manual_seed(3)
    written = eval(_model_expr(model), {"torch": torch, "nn": nn, **{n: getattr(layers, n) for n in layers.__all__}})
    ours, theirs = module.state_dict(), written.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]) for k in ours)


def test_the_strategies_draw_every_kind():
    missing = set(LEAF_CLASSES)

    @settings(
        max_examples=1000, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(models(max_leaves=6))
    def look(model):
        missing.difference_update(type(leaf) for leaf in leaves(model.root))
        if not missing:
            raise StopIteration

    with pytest.raises(StopIteration):
        look()
    assert not missing, missing


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(cases(max_world_size=2))
def test_every_kind_names_its_module_types_and_is_described_and_counted(case):
    line = describe(case)
    for leaf in leaves(case.model.root):
        assert isinstance(leaf, Leaf)
        assert set(leaf.module_types) <= set(MODULE_TYPES) and set(leaf.module_types) <= set(MODULE_TYPE_CLASSES)
        assert leaf.kind in leaf.module_types or not leaf.module_types
    assert line.count(" > ") == len(leaves(case.model.root)) - 1
    from shardfuzz.case import dimensions

    assert set(coverage_dimensions()) <= set(dimensions(case))
