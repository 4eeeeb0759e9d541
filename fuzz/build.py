"""Case -> modules: the unsharded tree, its sharding by an engine, its optimizer.

Runs on a rank; imports no Hypothesis and draws nothing.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from shardfuzz.capabilities import fully_shard_fn
from shardfuzz.case import FSDP1, FSDP2, SGD, Adam, Block, Linear, Model, Sequential, Side, child_items

__all__ = ["build_module", "shard", "build_optimizer", "BlockModule"]


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


def build_optimizer(spec, params, *, perturbed: bool = False) -> torch.optim.Optimizer:
    """The case's optimizer; ``perturbed`` (the load side) changes every hyperparameter a little,
    so the loaded param groups must come from the checkpoint to match."""
    scale = 0.5 if perturbed else 1.0
    if isinstance(spec, SGD):
        return torch.optim.SGD(params, lr=spec.lr * scale, momentum=spec.momentum * scale)
    if isinstance(spec, Adam):
        if perturbed:
            return torch.optim.Adam(params, lr=spec.lr * scale, betas=(0.8, 0.99), eps=3e-8)
        return torch.optim.Adam(params, lr=spec.lr)
    raise TypeError(f"unknown optimizer {spec!r}")
