"""How a side puts its model together across ranks, written once for the pool's ranks and exported scripts.

The device meshes, the engines (FSDP1, FSDP2, DDP, tensor parallelism), activation
checkpointing, ``torch.compile`` and a model built on the meta device. ``build.py``
and ``roundtrip.py`` call these on the pool's ranks; ``export.py`` copies their
definitions, as they are, into every exported script, under the rules ``steps.py``
states (plain values in, only what a script imports at the top).
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist

__all__ = [
    "unwrapped_name",
    "rank_device",
    "dtensor",
    "fully_shard_fn",
    "device_mesh",
    "shard_on_dim",
    "shard_module",
    "shard_fsdp2",
    "wrap_fsdp1",
    "tensor_parallel",
    "shard_units",
    "stage_bounds",
    "pipeline_stage",
    "pipeline_group",
    "split_planned",
    "data_rank",
    "checkpoint_modules",
    "built",
    "materialize",
    "synchronise_replicas",
    "wrap_and_shard",
]


def rank_device(device: str) -> torch.device:
    """This rank's ``torch.device`` for a side on ``device`` (``cuda``: the GPU the worker chose)."""
    return torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")


@functools.cache
def dtensor():
    """The module with ``DTensor``, ``Shard`` and ``Replicate``: public since torch 2.5, ``_tensor`` before."""
    import importlib

    for name in ("torch.distributed.tensor", "torch.distributed._tensor"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if all(hasattr(module, attr) for attr in ("DTensor", "Shard", "Replicate")):
            return module
    raise ImportError("no DTensor in torch.distributed.tensor or torch.distributed._tensor")


def fully_shard_fn():
    """FSDP2's ``fully_shard``: public since torch 2.6, ``_composable.fsdp`` before."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        from torch.distributed._composable.fsdp import fully_shard
    return fully_shard


def device_mesh(
    shape: tuple[int, ...], world_group, *, rank: int, generation: int = 0, device: str = "cpu", first: int = 0
):
    """The DeviceMesh of a side on ranks ``0..n-1`` (n = the product of ``shape``), or None off it. ``rank`` and
    those ranks count from the global rank ``first``.

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
    replicas, shards = shape
    ranks = torch.arange(first, first + replicas * shards).view(replicas, shards)
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


def shard_on_dim(dim: int, param):
    """FSDP2's ``shard_placement_fn``: ``Shard`` on ``dim``, or on the last dim of a parameter with fewer."""
    return dtensor().Shard(min(dim, param.ndim - 1))


def shard_module(
    module,
    engine: dict,
    *,
    wrap,
    innermost_first,
    group,
    mesh,
    device: str,
    classes,
    mixed_precision: str = "none",
    offload_params: bool = False,
    batchnorm_fp32: bool = False,
):
    """``module`` wrapped by ``engine`` (``{"kind": "FSDP1" | "FSDP2" | "DDP" | "Unsharded" | "TP", **its fields}``)
    on ``group`` (1-D) or ``mesh`` (FSDP2, HSDP). ``wrap``: the modules listed as inner units;
    ``innermost_first``: the same, a module before its ancestors; ``classes``: module type name -> class
    (for FSDP1's ``module-type`` policy); ``mixed_precision`` and ``offload_params`` (FSDP2's
    ``CPUOffloadPolicy``) and ``batchnorm_fp32`` as ``Side`` has them."""
    lowered = {  # Side.mixed_precision -> (parameter dtype, reduction dtype)
        "bf16": (torch.bfloat16, torch.bfloat16),
        "bf16-params": (torch.bfloat16, torch.float32),
        "bf16-reduce": (torch.float32, torch.bfloat16),
    }.get(mixed_precision)
    kind = engine["kind"]
    if kind in ("Unsharded", "ZeRO"):  # ZeRO: deepspeed.initialize wraps the module with its optimizer (zero.py)
        return module
    if kind == "TP":
        return tensor_parallel(module, engine, innermost_first=innermost_first, mesh=mesh)
    if kind == "PP":
        return pipeline_stage(module, engine, innermost_first=innermost_first, mesh=mesh, device=device)
    if kind == "DDP":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [rank_device(device)] if device == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, process_group=group)
    if kind == "FSDP2":
        return shard_fsdp2(
            module,
            engine,
            innermost_first=innermost_first,
            mesh=mesh,
            lowered=lowered,
            offload_params=offload_params,
            batchnorm_fp32=batchnorm_fp32,
        )
    if kind != "FSDP1":
        raise TypeError(f"unknown engine {engine!r}")
    return wrap_fsdp1(
        module,
        engine,
        wrap=wrap,
        innermost_first=innermost_first,
        group=group,
        mesh=mesh,
        device=device,
        classes=classes,
        lowered=lowered,
    )


def shard_fsdp2(module, engine: dict, *, innermost_first, mesh, lowered, offload_params: bool, batchnorm_fp32=False):
    """FSDP2: ``fully_shard`` on each listed unit, innermost first, then on ``module`` itself. ``lowered``:
    mixed precision's (parameter dtype, reduction dtype), or None. ``batchnorm_fp32``: each BatchNorm first,
    as its own unit computing in float32 and casting its output back to the lowered dtype (FSDP2's policy
    has no buffer dtype: bfloat16 weights would meet float32 running statistics)."""
    fully_shard = fully_shard_fn()
    kwargs = {"mesh": mesh, "reshard_after_forward": engine["reshard_after_forward"]}
    if lowered is not None:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=lowered[0], reduce_dtype=lowered[1])
    if offload_params:
        from torch.distributed.fsdp import CPUOffloadPolicy

        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=False)  # pinning needs an accelerator
    if engine["shard_dim"]:
        kwargs["shard_placement_fn"] = functools.partial(shard_on_dim, engine["shard_dim"])
    own_units = []
    if batchnorm_fp32 and lowered is not None:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        float32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32, output_dtype=lowered[0])
        own_units = [
            path for path, sub in module.named_modules() if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm)
        ]
        for path in own_units:
            fully_shard(module.get_submodule(path), **{**kwargs, "mp_policy": float32})
    for path in innermost_first:
        if path not in own_units:
            fully_shard(module.get_submodule(path), **kwargs)
    fully_shard(module, **kwargs)
    return module


def wrap_fsdp1(module, engine: dict, *, wrap, innermost_first, group, mesh, device: str, classes, lowered):
    """FSDP1: ``FullyShardedDataParallel`` around ``module``, its inner units chosen by the engine's wrap policy
    (``set``: the ``wrap`` modules; ``manual``: each wrapped by hand, innermost first; ``module-type``,
    ``size-based``, ``always``: torch's policies). ``lowered`` as for ``shard_fsdp2``."""
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
    from torch.distributed.fsdp import wrap as fsdp_wrap

    hybrid = engine["sharding_strategy"] in ("HYBRID_SHARD", "_HYBRID_SHARD_ZERO2")
    common = dict(
        device_id=rank_device(device),
        use_orig_params=engine["use_orig_params"],
        sharding_strategy=ShardingStrategy[engine["sharding_strategy"]],
        **({"device_mesh": mesh} if hybrid else {"process_group": group}),
    )
    if lowered is not None:
        from torch.distributed.fsdp import MixedPrecision

        common["mixed_precision"] = MixedPrecision(param_dtype=lowered[0], reduce_dtype=lowered[1])
    policy: object = None
    if engine["wrap_policy"] == "set" and wrap:
        inner = {id(module.get_submodule(path)) for path in wrap}
        policy = functools.partial(fsdp_wrap.lambda_auto_wrap_policy, lambda_fn=lambda m: id(m) in inner)
    elif engine["wrap_policy"] == "manual":
        with fsdp_wrap.enable_wrap(wrapper_cls=FullyShardedDataParallel, **common):
            for path in innermost_first:
                parent, _, name = path.rpartition(".")
                owner = module.get_submodule(parent) if parent else module
                setattr(owner, name, fsdp_wrap.wrap(getattr(owner, name)))
    elif engine["wrap_policy"] == "module-type":
        policy = fsdp_wrap.ModuleWrapPolicy({classes[name] for name in engine["module_types"]})
    elif engine["wrap_policy"] == "size-based":
        policy = functools.partial(fsdp_wrap.size_based_auto_wrap_policy, min_num_params=engine["min_num_params"])
    elif engine["wrap_policy"] == "always":
        policy = fsdp_wrap.always_wrap_policy
    return FullyShardedDataParallel(module, auto_wrap_policy=policy, **common)  # type: ignore[arg-type]


def tensor_parallel(module, engine: dict, *, innermost_first, mesh):
    """``module`` with each Linear of ``engine["plan"]`` split across the mesh's last dimension
    (``parallelize_module``) and each planned mixture of experts' grouped experts split there on the expert
    dimension (``distribute_module``, the router left whole), then, with ``engine["fsdp"]``, ``fully_shard``
    across its first (the listed units innermost first, then the root), as torchtitan composes them. A
    planned leaf that activation checkpointing wrapped is found inside its wrapper."""
    dp_mesh, tp_mesh = (mesh[name] for name in mesh.mesh_dim_names)
    split_planned(module, engine["plan"], tp_mesh)
    if engine["fsdp"]:
        shard_units(module, innermost_first, mesh=dp_mesh, reshard_after_forward=engine["reshard_after_forward"])
    return module


def split_planned(module, plan, tp_mesh) -> None:
    """Each Linear of ``plan`` split across ``tp_mesh`` (``parallelize_module``, colwise or rowwise, the activations
    between them whole) and each planned mixture of experts' grouped experts on the expert dimension
    (``distribute_module``)."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    tensors = dtensor()
    replicate = tensors.Replicate()

    def split_experts(name, experts, ep_mesh):
        for key, weight in list(experts.named_parameters(recurse=False)):
            placed = tensors.distribute_tensor(weight.data, ep_mesh, [tensors.Shard(0)])
            experts.register_parameter(key, torch.nn.Parameter(placed, requires_grad=weight.requires_grad))

    for path, style in plan:
        leaf = module.get_submodule(path)
        leaf = getattr(leaf, "_checkpoint_wrapped_module", leaf)
        if style == "experts":
            tensors.distribute_module(leaf.experts, tp_mesh, split_experts)
            continue
        split = (
            ColwiseParallel(output_layouts=replicate)
            if style == "colwise"
            else RowwiseParallel(input_layouts=replicate)
        )
        parallelize_module(leaf, tp_mesh, split)


def stage_bounds(children: int, stages: int) -> list[int]:
    """Where ``stages`` pipeline stages cut ``children`` root children: stage ``s`` holds children
    ``bounds[s]:bounds[s + 1]``, contiguous, the first stages one more where they do not divide."""
    bounds = [0]
    for stage in range(stages):
        bounds.append(bounds[-1] + children // stages + (stage < children % stages))
    return bounds


def pipeline_stage(module, engine: dict, *, innermost_first, mesh, device: str):
    """This rank's pipeline stage of ``module``, as torchtitan keeps model parts: the root's children of the
    other stages (``stage_bounds``, along the mesh's first dimension, ``pp``) replaced by ``nn.Identity``, so
    each kept parameter has its name in the whole model; with ``engine["fsdp"]``, ``fully_shard`` across the
    mesh's second dimension (``dp``: the listed units of the stage innermost first, then the root); with a
    ``plan``, the stage's planned modules split across it (``tp``, ``split_planned``). The stage
    is ``torch.distributed.pipelining``'s ``PipelineStage`` on the ``pp`` group, as ``module.pipeline_stage``
    (``steps.train_steps`` runs it under a one-microbatch GPipe schedule)."""
    from torch.distributed.pipelining import PipelineStage

    pp_mesh, dp_mesh = (mesh[name] for name in mesh.mesh_dim_names)
    stage, stages = pp_mesh.get_local_rank(), pp_mesh.size()
    names = [name for name, _ in module.named_children()]
    bounds = stage_bounds(len(names), stages)
    kept = names[bounds[stage] : bounds[stage + 1]]
    for name in names:
        if name not in kept:
            setattr(module, name, torch.nn.Identity())
    plan = [(path, style) for path, style in engine.get("plan", ()) if path.split(".")[0] in kept]
    split_planned(module, plan, dp_mesh)  # with a plan, the mesh's second dimension is tp
    if engine["fsdp"]:
        units = [path for path in innermost_first if path.split(".")[0] in kept]
        shard_units(module, units, mesh=dp_mesh, reshard_after_forward=engine["reshard_after_forward"])
    module.pipeline_stage = PipelineStage(module, stage, stages, rank_device(device), group=pp_mesh.get_group())
    return module


def pipeline_group(model):
    """The ``pp`` group of a pipeline stage (``pipeline_stage``), or None for a model that is not one."""
    stage = getattr(model, "pipeline_stage", None)
    return None if stage is None else stage.group


def shard_units(module, innermost_first, *, mesh, reshard_after_forward: bool) -> None:
    """``fully_shard`` across ``mesh`` on each listed unit, innermost first, then on ``module`` itself: FSDP2 across
    ``dp`` beside tensor or pipeline parallelism."""
    fully_shard = fully_shard_fn()
    for path in innermost_first:
        fully_shard(module.get_submodule(path), mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward)


def data_rank(engine: dict, mesh_shape, rank: int) -> int:
    """The rank whose batches ``rank`` trains on: its own, but under tensor parallelism the ``dp`` row's
    (every rank of a ``tp`` group must see the same batch), and in a pipeline its place in its stage (every
    stage of a ``pp`` group works on the same batch; with tensor parallelism inside the stages, every rank)."""
    if engine["kind"] == "TP":
        return rank // mesh_shape[-1]
    if engine["kind"] == "PP":
        return 0 if engine.get("plan") else rank % mesh_shape[-1]
    return rank


def checkpoint_modules(model, modules) -> None:
    """``checkpoint_wrapper`` around each of ``modules`` (found by identity anywhere in ``model``, sharded
    or not): activation checkpointing, whose wrapper renames their parameters."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )

    chosen = {id(module) for module in modules}
    apply_activation_checkpointing(model, checkpoint_wrapper_fn=checkpoint_wrapper, check_fn=lambda m: id(m) in chosen)


def built(build, seed: int, *, meta: bool):
    """``build(seed)``, on the meta device if ``meta`` (no memory, no values: ``materialize`` gives them)."""
    if not meta:
        return build(seed)
    with torch.device("meta"):
        return build(seed)


def materialize(model, device: str, seed: int = 0) -> None:
    """A model built on the meta device, made real: each module with parameters or buffers of its own is
    ``to_empty``'d and ``reset_parameters()``'d, as FSDP1 does it itself (the contract it documents: a
    module's ``reset_parameters`` sets its own state, non-persistent buffers included); shared weights,
    which ``to_empty`` splits, are tied again (``tie_weights``). Each module's initialisation is seeded
    from ``seed`` and its place in the tree."""
    with torch.no_grad():
        for index, module in enumerate(model.modules()):
            if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
                module.to_empty(device=rank_device(device), recurse=False)
                torch.manual_seed(seed * 1_000_003 + index)  # each module's own draws, whatever came before
                module.reset_parameters()
        for module in model.modules():
            if hasattr(module, "tie_weights"):  # to_empty made a shared weight two
                module.tie_weights()
        synchronise_replicas(model)


def synchronise_replicas(model) -> None:
    """Every replicated dimension of every DTensor parameter and buffer made equal, from the first rank of
    its group (FSDP1's ``sync_module_states``, for DTensors): on CPU meshes DTensor's random ops draw from
    each rank's own generator, so after ``reset_parameters`` a bias replicated across ``tp`` would differ
    between ranks whose weight shards differ in size."""
    import itertools

    for tensor in itertools.chain(model.parameters(), model.buffers()):
        placements = getattr(tensor, "placements", None)
        for dim, placement in enumerate(placements or ()):
            if placement.is_replicate():
                group = tensor.device_mesh.get_group(dim)
                dist.broadcast(tensor.to_local(), src=dist.get_global_rank(group, 0), group=group)


def wrap_and_shard(module, wrappers: dict, shard, *, engine: str, device: str = "cpu", seed: int = 0):
    """``shard(module)`` inside a side's wrappers (``Side.wrappers``): activation checkpointing on the
    ``checkpointed`` leaves before or after the sharding, then ``torch.compile`` of the whole. A model
    built on the meta device (``meta_init``) is materialized where each engine needs it: DDP and a plain
    module before (DDP broadcasts real tensors), FSDP2, TP and PP after sharding (each rank its shard only,
    torchtitan's order); FSDP1 materializes it itself while it wraps."""
    leaves = [module.get_submodule(path) for path in wrappers["checkpointed"]]
    if wrappers["meta_init"] and engine in ("DDP", "Unsharded"):
        materialize(module, device, seed)
    if wrappers["activation_checkpointing"] == "before":
        checkpoint_modules(module, leaves)
    model = shard(module)
    if wrappers["meta_init"] and engine in ("FSDP2", "TP", "PP"):
        materialize(model, device, seed)
    if wrappers["activation_checkpointing"] == "after":
        checkpoint_modules(model, leaves)
    if wrappers["compiled"]:
        model = torch.compile(model, backend="eager")
    return model


def unwrapped_name(name: str) -> str:
    """A parameter's name without the wrappers' prefixes: FSDP1's, activation checkpointing's,
    ``torch.compile``'s (``_orig_mod.``) and DDP's (``module.``)."""
    for prefix in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod."):
        name = name.replace(prefix, "")
    return name[len("module.") :] if name.startswith("module.") else name
