"""The torch calls of a round-trip, each written once: the pool's ranks run them, and so do exported scripts.

``roundtrip.py`` and ``build.py`` call these on the pool's ranks; ``export.py``
copies their definitions, as they are, into every exported script, whose own code
only sequences them. A change to a step here is therefore a change to both.

What makes the copy work (``tests/test_export.py`` checks it): these functions
take plain values (numbers, strings, dicts such as an engine's fields), never a
``Case``; at the top this module imports only what an exported script imports
(``functools``, ``torch``, ``torch.distributed as dist``), anything else inside a
function; and they call only each other and the classes of ``layers.py``.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist

__all__ = [
    "rank_device",
    "dtensor",
    "fully_shard_fn",
    "scalar_loss",
    "training_batch",
    "train_steps",
    "make_scheduler",
    "AppState",
    "make_app_state",
    "app_values",
    "unwrapped_name",
    "group_parameters",
    "make_optimizer",
    "device_mesh",
    "shard_on_dim",
    "shard_module",
    "tensor_parallel",
    "data_rank",
    "checkpoint_modules",
    "built",
    "materialize",
    "synchronise_replicas",
    "wrap_and_shard",
    "state_dict_options",
    "local_state_dict_type",
    "get_side_state",
    "model_and_optim_state",
    "set_side_state",
    "plain",
    "gather_full",
    "offloaded_full_state",
    "flat_optim",
    "local_copy",
    "api_parity_pairs",
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


def scalar_loss(output):
    """The training loss of a forward's output: a tensor's squared mean; for a tuple, list or dict (or an
    object with ``logits``, as a Hugging Face model returns), that of its first floating-point tensor."""
    if isinstance(output, torch.Tensor):
        return output.square().mean()
    if isinstance(output, dict):
        output = list(output.values())
    elif not isinstance(output, (tuple, list)):
        output = [getattr(output, "logits", None)]
    first = next((o for o in output if isinstance(o, torch.Tensor) and o.is_floating_point()), None)
    if first is None:
        raise TypeError("the model's output holds no floating-point tensor to train on")
    return first.float().square().mean()


def training_batch(generator, *, batch_size: int, input_width: int, num_embeddings: int, dtype: str):
    """One batch of inputs, drawn on the CPU from ``generator``: token indices for a model
    whose first leaf is an Embedding (``num_embeddings`` > 0), else features in ``dtype``."""
    if num_embeddings:
        return torch.randint(num_embeddings, (batch_size,), generator=generator)
    return torch.randn(batch_size, input_width, generator=generator).to(getattr(torch, dtype))


def train_steps(
    model,
    optim,
    *,
    seed: int,
    first: int,
    count: int,
    rank: int,
    same_batch: bool,
    batch_size: int,
    input_width: int,
    num_embeddings: int,
    dtype: str,
    device: str = "cpu",
    app=None,
    make_batch=None,
) -> None:
    """Steps ``first .. first + count - 1`` on batches seeded by (seed, step, rank), drawn on the CPU.

    ``same_batch``: every rank draws the same batches (the rank left out of the seed). ``app``: an
    ``AppState`` whose gradient scaler (if any) scales the loss, and which steps after the optimizer.
    ``make_batch(batch_size, generator)``: a user's model's own inputs (a tensor, or a tuple of the
    forward's arguments) instead of ``training_batch``'s."""
    generator = torch.Generator()
    for step in range(first, first + count):
        generator.manual_seed(seed * 1_000_003 + step * 101 + (0 if same_batch else rank))
        if make_batch is not None:
            x = make_batch(batch_size, generator)
        else:
            x = training_batch(
                generator, batch_size=batch_size, input_width=input_width, num_embeddings=num_embeddings, dtype=dtype
            )
        inputs = x if isinstance(x, tuple) else (x,)
        if device != "cpu":
            inputs = tuple(t.to(rank_device(device)) if isinstance(t, torch.Tensor) else t for t in inputs)
        loss = scalar_loss(model(*inputs))
        scaler = app.scaler if app is not None else None
        if scaler is not None:  # the scale is a power of two: the unscaled step is bit for bit the plain one
            scaler.scale(loss).backward()
            scaler.step(optim)
            scaler.update()
        else:
            loss.backward()
            optim.step()
        optim.zero_grad()
        if app is not None:
            app.after_step(batch_size)


def make_scheduler(optim, kind: str):
    """The LR scheduler ``kind`` names (``case.SCHEDULERS``) over ``optim``."""
    schedulers = torch.optim.lr_scheduler
    if kind == "step":
        return schedulers.StepLR(optim, step_size=2, gamma=0.5)
    if kind == "cosine":
        return schedulers.CosineAnnealingLR(optim, T_max=8)
    if kind == "linear":
        return schedulers.LinearLR(optim, start_factor=0.25, total_iters=4)
    if kind == "warmup-cosine":
        warmup = schedulers.LinearLR(optim, start_factor=0.25, total_iters=2)
        return schedulers.SequentialLR(optim, [warmup, schedulers.CosineAnnealingLR(optim, T_max=8)], milestones=[2])
    raise ValueError(f"unknown scheduler {kind!r}")


class AppState:
    """A training loop's state beyond the model and optimizer, as one ``Stateful`` in the checkpoint:
    the LR scheduler, a gradient scaler (or None), the step counter and a user object. DCP calls
    ``state_dict`` on save and ``load_state_dict`` (with the template filled) on load."""

    def __init__(self, scheduler, scaler):
        self.scheduler, self.scaler = scheduler, scaler
        self.step, self.tokens_seen = 0, 0
        self.positions = torch.zeros(2, dtype=torch.int64)  # a tensor of the user's: (step, tokens seen)

    def after_step(self, batch_size: int) -> None:
        self.scheduler.step()
        self.step += 1
        self.tokens_seen += batch_size
        self.positions = torch.tensor([self.step, self.tokens_seen])

    def state_dict(self) -> dict:
        state = {
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "user": {"tokens_seen": self.tokens_seen, "positions": self.positions},
        }
        if self.scaler is not None:
            state["grad_scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.tokens_seen, self.positions = state["user"]["tokens_seen"], state["user"]["positions"]
        if self.scaler is not None:
            self.scaler.load_state_dict(state["grad_scaler"])


def make_app_state(optim, training: dict | None, *, engine: str, group, device: str = "cpu"):
    """An ``AppState`` for ``training`` (``{"scheduler": kind, "grad_scaler": bool}``), or None without
    one. FSDP1 takes its own ``ShardedGradScaler``; the scaler grows its scale every 2 steps."""
    if training is None:
        return None
    scaler: torch.amp.GradScaler | None = None  # FSDP1's ShardedGradScaler is one
    if training["grad_scaler"]:
        if engine == "FSDP1":
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            scaler = ShardedGradScaler(device, growth_interval=2, process_group=group)
        else:
            scaler = torch.amp.GradScaler(device, growth_interval=2)
    return AppState(make_scheduler(optim, training["scheduler"]), scaler)


def app_values(app, optim) -> dict:
    """``app.<path>`` for every value of ``app``'s state, and ``app.next_lr``: the learning rates the
    scheduler's next step gives (taken, then undone: the optimizer's groups and the scheduler are
    restored). Empty without an app state."""
    if app is None:
        return {}
    flat = {}

    def visit(prefix, value):
        if isinstance(value, dict):
            for key, inner in value.items():
                visit(f"{prefix}.{key}", inner)
        elif isinstance(value, list) and any(isinstance(inner, dict) for inner in value):  # SequentialLR's
            for i, inner in enumerate(value):
                visit(f"{prefix}.{i}", inner)
        else:
            flat[prefix] = plain(value)

    visit("app", app.state_dict())
    scheduler_state, lrs = app.scheduler.state_dict(), [group["lr"] for group in optim.param_groups]
    app.scheduler.step()
    flat["app.next_lr"] = [group["lr"] for group in optim.param_groups]
    app.scheduler.load_state_dict(scheduler_state)
    for group, lr in zip(optim.param_groups, lrs):
        group["lr"] = lr
    return flat


def unwrapped_name(name: str) -> str:
    """A parameter's name without the wrappers' prefixes: FSDP1's, activation checkpointing's,
    ``torch.compile``'s (``_orig_mod.``) and DDP's (``module.``)."""
    for prefix in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod."):
        name = name.replace(prefix, "")
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


def make_optimizer(model, name: str, hyperparameters: list[dict]):
    """``torch.optim.<name>`` over ``model``'s parameters in one group per hyperparameter dict."""
    groups = group_parameters(model, len(hyperparameters))
    return getattr(torch.optim, name)([{"params": g, **h} for g, h in zip(groups, hyperparameters)])


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
):
    """``module`` wrapped by ``engine`` (``{"kind": "FSDP1" | "FSDP2" | "DDP" | "Unsharded" | "TP", **its fields}``)
    on ``group`` (1-D) or ``mesh`` (FSDP2, HSDP). ``wrap``: the modules listed as inner units;
    ``innermost_first``: the same, a module before its ancestors; ``classes``: module type name -> class
    (for FSDP1's ``module-type`` policy); ``mixed_precision`` and ``offload_params`` (FSDP2's
    ``CPUOffloadPolicy``) as ``Side`` has them."""
    lowered = {  # Side.mixed_precision -> (parameter dtype, reduction dtype)
        "bf16": (torch.bfloat16, torch.bfloat16),
        "bf16-params": (torch.bfloat16, torch.float32),
        "bf16-reduce": (torch.float32, torch.bfloat16),
    }.get(mixed_precision)
    kind = engine["kind"]
    if kind == "Unsharded":
        return module
    if kind == "TP":
        return tensor_parallel(module, engine, innermost_first=innermost_first, mesh=mesh)
    if kind == "DDP":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [rank_device(device)] if device == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, process_group=group)
    if kind == "FSDP2":
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
        for path in innermost_first:
            fully_shard(module.get_submodule(path), **kwargs)
        fully_shard(module, **kwargs)
        return module
    if kind != "FSDP1":
        raise TypeError(f"unknown engine {engine!r}")
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
    module before (DDP broadcasts real tensors), FSDP2 after ``fully_shard`` (each rank its shard only,
    torchtitan's order); FSDP1 materializes it itself while it wraps."""
    leaves = [module.get_submodule(path) for path in wrappers["checkpointed"]]
    if wrappers["meta_init"] and engine in ("DDP", "Unsharded"):
        materialize(module, device, seed)
    if wrappers["activation_checkpointing"] == "before":
        checkpoint_modules(module, leaves)
    model = shard(module)
    if wrappers["meta_init"] and engine in ("FSDP2", "TP"):
        materialize(model, device, seed)
    if wrappers["activation_checkpointing"] == "after":
        checkpoint_modules(model, leaves)
    if wrappers["compiled"]:
        model = torch.compile(model, backend="eager")
    return model


def tensor_parallel(module, engine: dict, *, innermost_first, mesh):
    """``module`` with each Linear of ``engine["plan"]`` split across the mesh's last dimension
    (``parallelize_module``), then, with ``engine["fsdp"]``, ``fully_shard`` across its first (the listed
    units innermost first, then the root), as torchtitan composes them. A planned Linear that activation
    checkpointing wrapped is found inside its wrapper."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    replicate = dtensor().Replicate()
    dp_mesh, tp_mesh = (mesh[name] for name in mesh.mesh_dim_names)
    for path, style in engine["plan"]:
        linear = module.get_submodule(path)
        linear = getattr(linear, "_checkpoint_wrapped_module", linear)
        split = (
            ColwiseParallel(output_layouts=replicate)
            if style == "colwise"
            else RowwiseParallel(input_layouts=replicate)
        )
        parallelize_module(linear, tp_mesh, split)
    if engine["fsdp"]:
        fully_shard = fully_shard_fn()
        for path in innermost_first:
            fully_shard(module.get_submodule(path), mesh=dp_mesh, reshard_after_forward=engine["reshard_after_forward"])
        fully_shard(module, mesh=dp_mesh, reshard_after_forward=engine["reshard_after_forward"])
    return module


def data_rank(engine: dict, mesh_shape, rank: int) -> int:
    """The rank whose batches ``rank`` trains on: its own, but under tensor parallelism the ``dp`` row's
    (every rank of a ``tp`` group must see the same batch)."""
    return rank // mesh_shape[-1] if engine["kind"] == "TP" else rank


def state_dict_options(*, full: bool, flatten: bool, extra: dict):
    """``StateDictOptions`` for a side: ``full_state_dict``, ``flatten_optimizer_state_dict``, and ``extra``
    (only the fields a case sets: an older torch may lack one the case never sets)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, flatten_optimizer_state_dict=flatten, **extra)


def local_state_dict_type(model):
    """FSDP1's ``LOCAL_STATE_DICT`` context: each rank's flat-parameter shard."""
    from torch.distributed.fsdp import FullyShardedDataParallel, StateDictType

    return FullyShardedDataParallel.state_dict_type(model, StateDictType.LOCAL_STATE_DICT)


def get_side_state(model, optim, *, kind: str, api: str, options, app=None) -> dict:
    """``{"model": ..., "optim": ...}`` as a side gets it (and ``"app"``: the ``AppState``, where there is
    one). ``kind`` ``local``: FSDP1's own (DSD has no LOCAL form), the optimizer sharded; ``api``
    ``separate``: the model and optimizer getters, else ``get_state_dict``."""
    state = model_and_optim_state(model, optim, kind=kind, api=api, options=options)
    return {**state, "app": app} if app is not None else state


def model_and_optim_state(model, optim, *, kind: str, api: str, options) -> dict:
    """``get_side_state`` without the app state."""
    from torch.distributed.checkpoint import state_dict as dsd

    if kind == "local":
        with local_state_dict_type(model):
            model_sd = model.state_dict()
        return {"model": model_sd, "optim": dsd.get_optimizer_state_dict(model, optim, options=options)}
    if api == "separate":
        return {
            "model": dsd.get_model_state_dict(model, options=options),
            "optim": dsd.get_optimizer_state_dict(model, optim, options=options),
        }
    model_sd, optim_sd = dsd.get_state_dict(model, optim, options=options)
    return {"model": model_sd, "optim": optim_sd}


def set_side_state(model, optim, state: dict, *, kind: str, api: str, options, rank: int) -> None:
    """``set_state_dict`` (or the model and optimizer setters, or FSDP1's local form); with
    ``broadcast_from_rank0`` only rank 0 passes the state (as torch documents it: the others
    receive theirs from rank 0)."""
    from torch.distributed.checkpoint import state_dict as dsd

    if options.broadcast_from_rank0 and rank != 0:
        state = {"model": {}, "optim": {}}
    if kind == "local":
        with local_state_dict_type(model):
            model.load_state_dict(state["model"])
        dsd.set_optimizer_state_dict(model, optim, state["optim"], options=options)
    elif api == "separate":
        dsd.set_model_state_dict(model, state["model"], options=options)
        dsd.set_optimizer_state_dict(model, optim, state["optim"], options=options)
    else:
        dsd.set_state_dict(
            model, optim, model_state_dict=state["model"], optim_state_dict=state["optim"], options=options
        )


def plain(value):
    """A detached CPU copy of a tensor (the comparisons run on the CPU, whatever the side's device)."""
    return value.detach().to("cpu", copy=True) if isinstance(value, torch.Tensor) else value


def gather_full(model, optim, app=None) -> dict:
    """Full, flat, engine-independent state: ``model.<fqn>``, ``optim.<flat key>`` (and ``app_values``).

    ``cpu_offload`` would keep the gather on rank 0 only, but FSDP1 crashes with it
    on CPU ranks (see corpus), so every rank of the side gathers and only rank 0 keeps it.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_sd, optim_sd = get_state_dict(
        model, optim, options=StateDictOptions(full_state_dict=True, flatten_optimizer_state_dict=True)
    )
    flat = {f"model.{k}": plain(v) for k, v in model_sd.items()}
    flat.update({f"optim.{k}": plain(v) for k, v in optim_sd.items()})
    flat.update(app_values(app, optim))
    return flat


def offloaded_full_state(model, optim) -> dict:
    """``{flat key: (shape, device type)}`` of every tensor ``full_state_dict`` + ``cpu_offload`` leaves here."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_sd, optim_sd = get_state_dict(
        model,
        optim,
        options=StateDictOptions(full_state_dict=True, cpu_offload=True, flatten_optimizer_state_dict=True),
    )
    flat: dict = {f"model.{k}": v for k, v in model_sd.items()}
    flat.update({f"optim.{k}": v for k, v in optim_sd.items()})
    return {k: (tuple(v.shape), v.device.type) for k, v in flat.items() if isinstance(v, torch.Tensor)}


def flat_optim(osd) -> dict:
    """``state.<fqn>.<name>`` and ``param_groups.<i>.<hyperparameter>`` (without the ``params`` list); the fqn
    without wrapper prefixes (FSDP1's own optimizer state dict keeps ``torch.compile``'s, DSD's drops it)."""
    flat = {
        f"state.{unwrapped_name(fqn)}.{name}": plain(v)
        for fqn, entry in osd.get("state", {}).items()
        for name, v in entry.items()
    }
    for i, group in enumerate(osd.get("param_groups", [])):
        flat.update({f"param_groups.{i}.{k}": v for k, v in group.items() if k != "params"})
    return flat


def local_copy(value):
    """``plain`` of a DTensor's local shard, or of any other value."""
    return plain(value.to_local() if hasattr(value, "to_local") else value)


def api_parity_pairs(model, optim, *, engine: str, group):
    """``(what, ours, theirs)`` for each pair of torch APIs that must agree on this state:
    ``model.state_dict()`` against ``get_model_state_dict``; for FSDP1 also its own optimizer
    state dict against DSD's, and the optimizer's state before against after a reload through
    ``optim_state_dict_to_load``. A generator: each pair is made after the previous one is judged."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    full = StateDictOptions(full_state_dict=True)
    if engine != "FSDP1":
        ours = {unwrapped_name(k): local_copy(v) for k, v in model.state_dict().items()}  # DDP's "module."
        yield (
            "model.state_dict() vs get_model_state_dict",
            ours,
            {k: local_copy(v) for k, v in get_model_state_dict(model).items()},
        )
        return
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    ours = {unwrapped_name(k): plain(v) for k, v in model.state_dict().items()}  # FULL_STATE_DICT; compile's prefix
    theirs = {k: plain(v) for k, v in get_model_state_dict(model, options=full).items()}
    yield "model.state_dict() vs get_model_state_dict(full)", ours, theirs
    fsdp_osd = FSDP.optim_state_dict(model, optim, group=group)
    dcp_osd = get_optimizer_state_dict(model, optim, options=full)
    yield "FSDP.optim_state_dict vs get_optimizer_state_dict(full)", flat_optim(fsdp_osd), flat_optim(dcp_osd)
    optim.load_state_dict(FSDP.optim_state_dict_to_load(model, optim, fsdp_osd, group=group))
    after = get_optimizer_state_dict(model, optim, options=full)
    yield (
        "optimizer state before vs after optim_state_dict_to_load + load_state_dict",
        flat_optim(dcp_osd),
        flat_optim(after),
    )
