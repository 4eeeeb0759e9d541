"""Case -> modules: the unsharded tree, its sharding by an engine, its optimizer.

Runs on a rank; imports no Hypothesis and draws nothing. The torch calls themselves
are in ``sharding``, ``rank_steps`` and ``layers`` (shared with exported scripts); this module
turns a case's data into their plain arguments.
"""

from __future__ import annotations

import attrs
import torch
from torch import nn

from shardfuzz import case as case_data
from shardfuzz.case import Leaf, Model, Sequential, Side, UserModel, child_items, optimizer_groups
from shardfuzz.rank.portable.layers import Block, layer_class
from shardfuzz.rank.portable.optimizers import make_optimizer
from shardfuzz.rank.portable.sharding import rank_device, shard_module
from shardfuzz.rank.portable.steps import make_app_state

__all__ = [
    "build_module",
    "build_layer",
    "shard",
    "engine_fields",
    "build_optimizer",
    "build_app_state",
    "MODULE_TYPE_CLASSES",
]


#: ``FSDP1.module_types`` names -> the classes ``build_module`` makes (``ModuleWrapPolicy`` takes classes).
MODULE_TYPE_CLASSES = {name: layer_class(cls) for name, cls in case_data.MODULE_TYPE_CLASSES.items()}


def build_module(model: Model | UserModel, *, seed: int, device: str = "cpu", meta: bool = False) -> nn.Module:
    """The unsharded tree, initialised from ``seed`` (identically on every rank), on ``device``.

    Initialised on the CPU and then moved, so a side on a GPU starts from the very
    same values as a side on the CPU. ``meta``: on the meta device, no values
    (``sharding.wrap_and_shard`` materializes it)."""
    if meta:
        with torch.device("meta"):
            return build_module(model, seed=seed)
    if isinstance(model, UserModel):
        from shardfuzz.rank import model_factory as user_model

        module = user_model.build(model.factory, seed=seed)
        return module.to(rank_device(device)) if device != "cpu" else module
    torch.manual_seed(seed)
    width = model.input_width

    def make(node):
        nonlocal width
        if isinstance(node, Leaf):
            layer = build_layer(node.layer(width))
            width = node.output_width(width)
            return layer
        children = [(name, make(child)) for name, child in child_items(node)]
        if isinstance(node, Sequential):
            return nn.Sequential(*(module for _, module in children))
        return Block(children)

    module = make(model.root)
    if model.dtype != "float32":
        module = module.to(getattr(torch, model.dtype))  # floating tensors only: num_batches_tracked stays int64
    return module.to(rank_device(device)) if device != "cpu" else module


def build_layer(call) -> nn.Module:
    """The module a leaf's ``LayerCall`` describes."""
    layer = layer_class(call.cls)(*call.args, **call.kwargs)
    return layer.requires_grad_(False) if call.frozen else layer


def shard(module: nn.Module, side: Side, *, group, mesh) -> nn.Module:
    """Wrap ``module`` with the side's engine on ``group`` (1-D) or ``mesh`` (FSDP2, HSDP)."""
    return shard_module(
        module,
        engine_fields(side.engine),
        wrap=list(side.wrap),
        innermost_first=side.wrap_innermost_first,
        group=group,
        mesh=mesh,
        device=side.device,
        classes=MODULE_TYPE_CLASSES,
        mixed_precision=side.mixed_precision,
        offload_params=side.offload_params,
        batchnorm_fp32=side.batchnorm_fp32,
    )


def engine_fields(engine) -> dict:
    """The engine as ``sharding.shard_module`` takes it: ``{"kind": its class name, **its fields}``."""
    return {"kind": type(engine).__name__, **attrs.asdict(engine)}


def build_optimizer(
    spec,
    model: nn.Module,
    *,
    param_groups: int = 1,
    perturbed: bool = False,
    empty_group: bool = False,
    late_group: bool = False,
) -> torch.optim.Optimizer:
    """The case's optimizer over ``model``'s parameters in ``param_groups`` groups (see
    ``case.optimizer_groups``; ``empty_group``: and one without parameters; ``late_group``: without the parameters
    ``add_late_group`` adds later); ``perturbed`` (the load side) changes the hyperparameters, so the loaded param
    groups must come from the checkpoint to match."""
    name, hyperparameters = optimizer_groups(spec, param_groups, perturbed=perturbed)
    return make_optimizer(model, name, hyperparameters, empty_group, late_group)


def build_app_state(case, side: Side, optim, *, group):
    """The side's ``rank_steps.AppState`` for ``case.training`` (None without training state)."""
    return make_app_state(
        optim, training_fields(case.training), engine=type(side.engine).__name__, group=group, device=side.device
    )


def training_fields(training) -> dict | None:
    """``case.training`` as ``rank_steps.make_app_state`` takes it (and exported scripts write it)."""
    return None if training is None else attrs.asdict(training)
