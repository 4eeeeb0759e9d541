"""Case -> modules: the unsharded tree, its sharding by an engine, its optimizer.

Runs on a rank; imports no Hypothesis and draws nothing.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from shardfuzz.capabilities import dtensor, fully_shard_fn
from shardfuzz.case import (
    DDP,
    FSDP1,
    FSDP2,
    BatchNorm,
    Block,
    Conv,
    Embedding,
    LayerNorm,
    Linear,
    Model,
    Scale,
    Sequential,
    Side,
    Tied,
    Unsharded,
    child_items,
    optimizer_groups,
)

__all__ = [
    "build_module",
    "rank_device",
    "shard",
    "device_mesh",
    "build_optimizer",
    "group_parameters",
    "training_batch",
    "unwrapped_name",
    "BlockModule",
    "Conv1dLeaf",
    "Conv2dLeaf",
    "ScaleLeaf",
    "TiedLeaf",
    "LEAF_MODULE_SOURCES",
    "MODULE_TYPE_CLASSES",
]


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


class Conv1dLeaf(nn.Conv1d):
    """``nn.Conv1d`` on a batch of features: the features are the channels of a length-1 signal."""

    def forward(self, x):
        return super().forward(x.unsqueeze(-1)).squeeze(-1)


class Conv2dLeaf(nn.Conv2d):
    """``nn.Conv2d`` on a batch of features: the features are the channels of a 1x1 image."""

    def forward(self, x):
        return super().forward(x[..., None, None]).flatten(1)


class ScaleLeaf(nn.Module):
    """A 0-D parameter times the input, plus a non-persistent buffer (in no state dict)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(()) + 0.5)  # from the seed: loading has work to do
        self.register_buffer("shift", torch.tensor(0.25), persistent=False)

    def forward(self, x):
        return x * self.scale + self.shift


class TiedLeaf(nn.Module):
    """Two width-to-width Linears ``a`` then ``b`` that share one weight (tied weights)."""

    def __init__(self, width, bias):
        super().__init__()
        self.a = nn.Linear(width, width, bias=bias)
        self.b = nn.Linear(width, width, bias=bias)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(self.a(x))


#: The classes above, as the exported scripts define them (one definition for both).
LEAF_MODULE_SOURCES = ("Conv1dLeaf", "Conv2dLeaf", "ScaleLeaf", "TiedLeaf")

#: ``FSDP1.module_types`` names -> the classes ``build_module`` makes (``ModuleWrapPolicy`` takes classes).
MODULE_TYPE_CLASSES = {
    "Linear": nn.Linear,
    "Sequential": nn.Sequential,
    "Block": BlockModule,
    "LayerNorm": nn.LayerNorm,
    "BatchNorm": nn.BatchNorm1d,
    "Conv1d": Conv1dLeaf,
    "Conv2d": Conv2dLeaf,
    "Embedding": nn.Embedding,
    "Scale": ScaleLeaf,
    "Tied": TiedLeaf,
}


def rank_device(device: str) -> torch.device:
    """This rank's ``torch.device`` for a side on ``device`` (``cuda``: the GPU the worker chose)."""
    return torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")


def build_module(model: Model, *, seed: int, device: str = "cpu") -> nn.Module:
    """The unsharded tree, initialised from ``seed`` (identically on every rank), on ``device``.

    Initialised on the CPU and then moved, so a side on a GPU starts from the very
    same values as a side on the CPU."""
    torch.manual_seed(seed)
    width = model.input_width

    def make(node):
        nonlocal width
        if isinstance(node, Linear):
            layer = nn.Linear(width, node.out_features, bias=node.bias)
            width = node.out_features
            return layer.requires_grad_(False) if node.frozen else layer
        if isinstance(node, LayerNorm):
            return nn.LayerNorm(width)
        if isinstance(node, BatchNorm):
            return nn.BatchNorm1d(width)
        if isinstance(node, Conv):
            conv = Conv1dLeaf if node.dims == 1 else Conv2dLeaf
            return conv(width, width, node.kernel_size, padding=node.kernel_size // 2, bias=node.bias)
        if isinstance(node, Embedding):
            return nn.Embedding(node.num_embeddings, width)
        if isinstance(node, Scale):
            return ScaleLeaf()
        if isinstance(node, Tied):
            return TiedLeaf(width, node.bias)
        children = [(name, make(child)) for name, child in child_items(node)]
        if isinstance(node, Sequential):
            return nn.Sequential(*(module for _, module in children))
        assert isinstance(node, Block)
        return BlockModule(children)

    module = make(model.root)
    if model.dtype != "float32":
        module = module.to(getattr(torch, model.dtype))  # floating tensors only: num_batches_tracked stays int64
    return module.to(rank_device(device)) if device != "cpu" else module


def training_batch(generator, *, batch_size: int, input_width: int, num_embeddings: int, dtype: str):
    """One batch of inputs, drawn on the CPU from ``generator``: token indices for a model
    whose first leaf is an Embedding (``num_embeddings`` > 0), else features in ``dtype``."""
    if num_embeddings:
        return torch.randint(num_embeddings, (batch_size,), generator=generator)
    return torch.randn(batch_size, input_width, generator=generator).to(getattr(torch, dtype))


def shard(module: nn.Module, side: Side, *, group, mesh) -> nn.Module:
    """Wrap ``module`` with the side's engine on ``group`` (1-D) or ``mesh`` (FSDP2, HSDP)."""
    engine = side.engine
    if isinstance(engine, FSDP1):
        return _fsdp1(module, side, engine, group=group, mesh=mesh)
    if isinstance(engine, FSDP2):
        fully_shard = fully_shard_fn()
        kwargs = {"mesh": mesh, "reshard_after_forward": engine.reshard_after_forward}
        if engine.shard_dim:
            kwargs["shard_placement_fn"] = functools.partial(_shard_on, engine)
        for path in side.wrap_innermost_first:
            fully_shard(module.get_submodule(path), **kwargs)
        fully_shard(module, **kwargs)
        return module
    if isinstance(engine, DDP):
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [rank_device(side.device)] if side.device == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, process_group=group)
    if isinstance(engine, Unsharded):
        return module
    raise TypeError(f"unknown engine {engine!r}")


def _shard_on(engine: FSDP2, param):
    """FSDP2's ``shard_placement_fn``: ``Shard`` on the engine's dim for this parameter."""
    return dtensor().Shard(engine.dim_for(param.ndim))


def _fsdp1(module: nn.Module, side: Side, engine: FSDP1, *, group, mesh) -> nn.Module:
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
    from torch.distributed.fsdp import wrap as fsdp_wrap

    placement = {"device_mesh": mesh} if engine.hybrid else {"process_group": group}
    common = dict(
        device_id=rank_device(side.device),
        use_orig_params=engine.use_orig_params,
        sharding_strategy=ShardingStrategy[engine.sharding_strategy],
        **placement,
    )
    policy = None
    if engine.wrap_policy == "set" and side.wrap:
        inner = {id(module.get_submodule(path)) for path in side.wrap}
        policy = functools.partial(fsdp_wrap.lambda_auto_wrap_policy, lambda_fn=lambda m: id(m) in inner)
    elif engine.wrap_policy == "manual":
        with fsdp_wrap.enable_wrap(wrapper_cls=FullyShardedDataParallel, **common):
            for path in side.wrap_innermost_first:
                parent, _, name = path.rpartition(".")
                owner = module.get_submodule(parent) if parent else module
                setattr(owner, name, fsdp_wrap.wrap(getattr(owner, name)))
    elif engine.wrap_policy == "module-type":
        policy = fsdp_wrap.ModuleWrapPolicy({MODULE_TYPE_CLASSES[name] for name in engine.module_types})
    elif engine.wrap_policy == "size-based":
        policy = functools.partial(fsdp_wrap.size_based_auto_wrap_policy, min_num_params=engine.min_num_params)
    elif engine.wrap_policy == "always":
        policy = fsdp_wrap.always_wrap_policy
    return FullyShardedDataParallel(module, auto_wrap_policy=policy, **common)


def device_mesh(shape: tuple[int, ...], world_group, *, rank: int, generation: int = 0, device: str = "cpu"):
    """The DeviceMesh of a side on ranks ``0..n-1`` (n = the product of ``shape``), or None off it.

    2-D: ``(replicas, shards)``; each row of ranks is a shard group, each column a
    replicate group. Creating the groups is collective on the whole world, so every
    rank calls this with the same shapes in the same order, on the side or not.
    ``world_group`` is the 1-D case's group (already made by the caller).

    ``generation`` goes into the dim names. DeviceMesh equality ignores the process
    groups, and DTensor caches plans by mesh: a mesh rebuilt on new groups (after the
    pool re-forms its process group) must not equal the old one, or a cached plan
    names a destroyed group ("Could not resolve the process group registered under
    the name ...", seen on torch 2.13 and 2.14).
    """
    from torch.distributed.device_mesh import DeviceMesh

    if len(shape) == 1:
        return (
            DeviceMesh.from_group(world_group, device, mesh_dim_names=(f"shard{generation}",))
            if rank < shape[0]
            else None
        )
    import torch.distributed as dist

    replicas, shards = shape
    ranks = torch.arange(replicas * shards).view(replicas, shards)
    rows = [dist.new_group(row.tolist()) for row in ranks]
    columns = [dist.new_group(column.tolist()) for column in ranks.t()]
    if rank >= replicas * shards:
        return None
    row, column = divmod(rank, shards)
    return DeviceMesh.from_group(
        [columns[column], rows[row]],
        device,
        mesh=ranks,
        mesh_dim_names=(f"replicate{generation}", f"shard{generation}"),
    )


def build_optimizer(spec, model: nn.Module, *, param_groups: int = 1, perturbed: bool = False) -> torch.optim.Optimizer:
    """The case's optimizer over ``model``'s parameters in ``param_groups`` groups (see
    ``case.optimizer_groups``); ``perturbed`` (the load side) changes the hyperparameters,
    so the loaded param groups must come from the checkpoint to match."""
    name, hyperparameters = optimizer_groups(spec, param_groups, perturbed=perturbed)
    groups = group_parameters(model, param_groups)
    return getattr(torch.optim, name)([{"params": g, **h} for g, h in zip(groups, hyperparameters)])


def unwrapped_name(name: str) -> str:
    """A parameter's name without FSDP1's and DDP's wrapper prefixes."""
    name = name.replace("_fsdp_wrapped_module.", "")
    return name[len("module.") :] if name.startswith("module.") else name


def group_parameters(model, param_groups: int) -> list[list]:
    """``model``'s parameters split into ``param_groups`` lists, the same way whatever the engine.

    The order is that of the parameters' names with the engines' wrapper prefixes
    removed, sorted; parameter ``i`` of that order goes to group ``i % param_groups``.
    (FSDP1 without ``use_orig_params`` shows FlatParameters instead; see unsupported.CASE_RULES.)
    """
    named = sorted(((unwrapped_name(name), p) for name, p in model.named_parameters()), key=lambda item: item[0])
    ordered = [p for _, p in named]
    return [ordered[i::param_groups] for i in range(param_groups)]
