"""Case -> modules: the unsharded tree, its sharding by an engine, its optimizer.

Runs on a rank; imports no Hypothesis and draws nothing.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from shardfuzz.capabilities import fully_shard_fn
from shardfuzz.case import FSDP1, FSDP2, Block, Linear, Model, Sequential, Side, child_items, optimizer_groups

__all__ = ["build_module", "shard", "build_optimizer", "group_parameters", "BlockModule"]


class BlockModule(nn.Module):
    """A custom container (not ``nn.Sequential``): named children applied in order."""

    def __init__(self, children: list[tuple[str, nn.Module]]):
        super().__init__()
        self._order = [name for name, _ in children]
        for name, child in children:
            self.add_module(name, child)

    def forward(self, x):
        for name in self._order:
            x = getattr(self, name)(x)
        return x


def build_module(model: Model, *, seed: int) -> nn.Module:
    """The unsharded tree, initialised from ``seed`` (identically on every rank)."""
    torch.manual_seed(seed)
    width = model.input_width

    def make(node):
        nonlocal width
        if isinstance(node, Linear):
            layer = nn.Linear(width, node.out_features, bias=node.bias)
            width = node.out_features
            return layer
        children = [(name, make(child)) for name, child in child_items(node)]
        if isinstance(node, Sequential):
            return nn.Sequential(*(module for _, module in children))
        assert isinstance(node, Block)
        return BlockModule(children)

    return make(model.root)


def shard(module: nn.Module, side: Side, *, group, mesh) -> nn.Module:
    """Wrap ``module`` with the side's engine on ``group`` (FSDP1) or ``mesh`` (FSDP2)."""
    engine = side.engine
    if isinstance(engine, FSDP1):
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

        inner = {id(module.get_submodule(path)) for path in side.wrap}
        policy = functools.partial(lambda_auto_wrap_policy, lambda_fn=lambda m: id(m) in inner)
        return FullyShardedDataParallel(
            module,
            process_group=group,
            device_id=torch.device("cpu"),
            use_orig_params=engine.use_orig_params,
            auto_wrap_policy=policy if inner else None,
        )
    if isinstance(engine, FSDP2):
        fully_shard = fully_shard_fn()
        # Innermost first: a module must be sharded before any ancestor is.
        for path in sorted(side.wrap, key=lambda p: -p.count(".")):
            fully_shard(module.get_submodule(path), mesh=mesh,
                        reshard_after_forward=engine.reshard_after_forward)
        fully_shard(module, mesh=mesh, reshard_after_forward=engine.reshard_after_forward)
        return module
    raise TypeError(f"unknown engine {engine!r}")


def build_optimizer(spec, model: nn.Module, *, param_groups: int = 1, perturbed: bool = False) -> torch.optim.Optimizer:
    """The case's optimizer over ``model``'s parameters in ``param_groups`` groups (see
    ``case.optimizer_groups``); ``perturbed`` (the load side) changes the hyperparameters,
    so the loaded param groups must come from the checkpoint to match."""
    name, hyperparameters = optimizer_groups(spec, param_groups, perturbed=perturbed)
    groups = group_parameters(model, param_groups)
    return getattr(torch.optim, name)([{"params": g, **h} for g, h in zip(groups, hyperparameters)])


def group_parameters(model, param_groups: int) -> list[list]:
    """``model``'s parameters split into ``param_groups`` lists, the same way whatever the engine.

    The order is that of the parameters' names with the engines' wrapper prefixes
    removed, sorted; parameter ``i`` of that order goes to group ``i % param_groups``.
    (FSDP1 without ``use_orig_params`` shows FlatParameters instead; see unsupported.CASE_RULES.)
    """
    named = sorted((name.replace("_fsdp_wrapped_module.", ""), p) for name, p in model.named_parameters())
    ordered = [p for _, p in named]
    return [ordered[i::param_groups] for i in range(param_groups)]
