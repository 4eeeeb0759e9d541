"""Hypothesis strategies that draw shardfuzz Cases: one public function per concept.

They import the Case data model and the capability probe, never the executor.
"""

from shardfuzz.strategies.cases import cases
from shardfuzz.strategies.coverage import offered_values
from shardfuzz.strategies.engines import engines, fsdp1_engines, fsdp2_engines, wrap_sets
from shardfuzz.strategies.modules import linears, models, module_trees, norm_layers, widths
from shardfuzz.strategies.options import (
    checks,
    flatten_optimizer_state_dict,
    load_mutations,
    optimizer_steps,
    optimizers,
    param_groups,
    state_dict_types,
)
from shardfuzz.strategies.sides import sides
from shardfuzz.strategies.topology import mesh_shapes, world_sizes

__all__ = [
    "cases",
    "checks",
    "engines",
    "fsdp1_engines",
    "fsdp2_engines",
    "flatten_optimizer_state_dict",
    "linears",
    "norm_layers",
    "load_mutations",
    "mesh_shapes",
    "models",
    "module_trees",
    "optimizer_steps",
    "offered_values",
    "optimizers",
    "param_groups",
    "sides",
    "state_dict_types",
    "widths",
    "world_sizes",
    "wrap_sets",
]
