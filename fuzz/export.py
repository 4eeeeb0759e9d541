"""A corpus entry as one standalone Python script that needs only torch: the file for a bug report.

The script spells the case out as straight-line torch code (the model as
``nn.Sequential(...)`` literals, the sharding calls, the optimizer, the training
loop, ``get_state_dict`` / ``dcp.save`` / ``dcp.load`` / ``set_state_dict``), then
compares the full state before saving and after loading bit for bit. It runs
under ``torchrun --nproc-per-node N`` or as ``python repro.py`` (it spawns its
own gloo ranks), prints ``REPRODUCED`` and exits 1 when the failure shows, and
prints ``did not reproduce`` and exits 0 when it does not.

It must do what ``roundtrip.run_case`` does, step for step; ``tests/test_export.py``
runs exported scripts next to the pool to keep the two in agreement.
"""

from __future__ import annotations

from string import Template

from shardfuzz.case import (
    DDP,
    FSDP1,
    FSDP2,
    BatchNorm,
    Case,
    Conv,
    Embedding,
    LayerNorm,
    Linear,
    Scale,
    Sequential,
    Side,
    Tied,
    Unsharded,
    child_items,
    optimizer_groups,
)
from shardfuzz.corpus import Entry
from shardfuzz.executor.deadlines import deadline_for
from shardfuzz.targets import DEFAULT_TARGET

__all__ = ["export_script"]


def export_script(entry: Entry, *, filename: str = "repro.py") -> str:
    """The text of a standalone reproducer for ``entry``.

    Raises ``ValueError`` for a case with a side on cuda: the scripts run gloo ranks
    on CPU only (replay such an entry with ``shardfuzz replay --device cuda``)."""
    case = entry.case
    on_gpu = [name for name in ("save", "load") if getattr(case, name).device != "cpu"]
    if on_gpu:
        raise ValueError(
            f"the case's {' and '.join(on_gpu)} side runs on cuda; exported scripts run CPU ranks "
            "only (use shardfuzz replay --device cuda on a machine with a GPU)"
        )
    return _TEMPLATE.substitute(
        title=entry.title.replace('"""', "'''"),
        status=f"{entry.status} ({entry.triage})",
        signature=entry.signature,
        versions=", ".join(f"{k} {v}" for k, v in sorted(entry.versions.items())) or "unknown",
        known=(
            f"\nKnown bug: {entry.known.link or entry.known.description} (torch {entry.known.torch})"
            if entry.known
            else ""
        ),
        filename=filename,
        world_size=entry.replay_world_size,
        hang_seconds=round(deadline_for(case) * 1.5),
        save_ranks=case.save.world_size,
        load_ranks=case.load.world_size,
        save_ranks_minus=case.save.world_size - 1,
        load_ranks_minus=case.load.world_size - 1,
        seed=case.seed,
        steps=case.steps,
        batch_size=case.batch_size,
        same_batch=case.model.has_batch_norm,
        input_width=case.model.input_width,
        num_embeddings=case.model.num_embeddings,
        dtype=case.model.dtype,
        flatten=case.flatten_optimizer_state_dict,
        save_type=repr(case.save.state_dict),
        load_type=repr(case.load.state_dict),
        local_may_refuse=case.local_may_refuse,
        module_classes=_module_class_sources(),
        model=_model_expr(case.model.root, case.model),
        load_model=_model_expr(case.load_model().root, case.model),
        checks=repr(set(case.checks)) if case.checks else "set()",
        load_mutation=repr(case.load_mutation),
        save_engine=type(case.save.engine).__name__,
        same_sharding=case.same_sharding,
        shard_save=_shard_function("shard_save", case.save),
        shard_load=_shard_function("shard_load", case.load),
        optimizer=_optimizer_expr(case, perturbed=False),
        load_optimizer=_optimizer_expr(case, perturbed=True),
        target=_target_code(entry.target, case.storage),
        async_save=case.saves_async,
        save_options=_options_literal(case, case.save),
        load_options=_options_literal(case, case.load),
        kept_on_load=repr(case.kept_by_load()),
        save_api=repr(case.save.state_dict_api),
        load_api=repr(case.load.state_dict_api),
        param_groups=case.param_groups,
        group_parameters=_source_of("unwrapped_name") + "\n\n" + _source_of("group_parameters"),
        device_mesh=_source_of("device_mesh"),
        save_mesh=tuple(case.save.mesh_shape),
        load_mesh=tuple(case.load.mesh_shape),
    )


def _model_expr(root, model) -> str:
    """Python source building the tree ``root`` of ``model`` (cast to the model's dtype)."""
    text = _module_expr(root, model.input_width, indent=8)[0]
    return text if model.dtype == "float32" else f"{text}.to(torch.{model.dtype})"


def _module_expr(node, width: int, indent: int) -> tuple[str, int]:
    """Python source building ``node`` fed ``width`` features, and the width it outputs."""
    if isinstance(node, Linear):
        frozen = ".requires_grad_(False)" if node.frozen else ""
        return f"nn.Linear({width}, {node.out_features}, bias={node.bias}){frozen}", node.out_features
    if isinstance(node, LayerNorm):
        return f"nn.LayerNorm({width})", width
    if isinstance(node, BatchNorm):
        return f"nn.BatchNorm1d({width})", width
    if isinstance(node, Conv):
        return (
            f"Conv{node.dims}dLeaf({width}, {width}, {node.kernel_size}, padding={node.kernel_size // 2}, "
            f"bias={node.bias})"
        ), width
    if isinstance(node, Embedding):
        return f"nn.Embedding({node.num_embeddings}, {width})", width
    if isinstance(node, Scale):
        return "ScaleLeaf()", width
    if isinstance(node, Tied):
        return f"TiedLeaf({width}, bias={node.bias})", width
    pad = " " * (indent + 4)
    parts = []
    for name, child in child_items(node):
        text, width = _module_expr(child, width, indent + 4)
        parts.append(f"{pad}{text}," if isinstance(node, Sequential) else f"{pad}({name!r}, {text}),")
    body = "\n".join(parts)
    close = " " * indent
    if isinstance(node, Sequential):
        return f"nn.Sequential(\n{body}\n{close})", width
    return f"Block([\n{body}\n{close}])", width


def _shard_function(name: str, side: Side) -> str:
    """``def name(model, group, mesh)``: the side's engine as ``build.shard`` applies it."""
    engine = side.engine
    wrap = list(side.wrap)
    innermost_first = side.wrap_innermost_first
    head = f"def {name}(model, group, mesh):\n"
    if isinstance(engine, Unsharded):
        return head + "    return model  # a plain module on one rank\n"
    if isinstance(engine, DDP):
        return head + (
            "    from torch.nn.parallel import DistributedDataParallel\n\n"
            "    return DistributedDataParallel(model, process_group=group)\n"
        )
    if isinstance(engine, FSDP2):
        placement = (
            "    from torch.distributed.tensor import Shard\n\n"
            "    kwargs['shard_placement_fn'] = lambda p: Shard(min("
            f"{engine.shard_dim}, p.ndim - 1))\n"
            if engine.shard_dim
            else ""
        )
        return head + (
            f"    kwargs = dict(mesh=mesh, reshard_after_forward={engine.reshard_after_forward})\n"
            f"{placement}"
            f"    for path in {innermost_first!r}:  # innermost first\n"
            "        fully_shard(model.get_submodule(path), **kwargs)\n"
            "    fully_shard(model, **kwargs)\n"
            "    return model\n"
        )
    assert isinstance(engine, FSDP1)
    placement = "device_mesh=mesh" if engine.hybrid else "process_group=group"
    body = (
        "    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy\n"
        "    from torch.distributed.fsdp import wrap as fsdp_wrap\n\n"
        f"    common = dict(device_id=torch.device('cpu'), use_orig_params={engine.use_orig_params},\n"
        f"                  sharding_strategy=ShardingStrategy.{engine.sharding_strategy}, {placement})\n"
        "    policy = None\n"
    )
    if engine.wrap_policy == "set" and wrap:
        body += (
            f"    inner = {{id(model.get_submodule(path)) for path in {wrap!r}}}\n"
            "    policy = functools.partial(fsdp_wrap.lambda_auto_wrap_policy, lambda_fn=lambda m: id(m) in inner)\n"
        )
    elif engine.wrap_policy == "manual":
        body += (
            "    with fsdp_wrap.enable_wrap(wrapper_cls=FullyShardedDataParallel, **common):\n"
            f"        for path in {innermost_first!r}:  # innermost first: nested wrap()\n"
            "            parent, _, attr = path.rpartition('.')\n"
            "            owner = model.get_submodule(parent) if parent else model\n"
            "            setattr(owner, attr, fsdp_wrap.wrap(getattr(owner, attr)))\n"
        )
    elif engine.wrap_policy == "module-type":
        from shardfuzz.build import MODULE_TYPE_CLASSES, BlockModule

        classes = [MODULE_TYPE_CLASSES[t] for t in engine.module_types]
        types = ", ".join(
            "Block"
            if cls is BlockModule
            else cls.__name__
            if cls.__module__ == "shardfuzz.build"
            else f"nn.{cls.__name__}"
            for cls in classes
        )
        body += f"    policy = fsdp_wrap.ModuleWrapPolicy({{{types}}})\n"
    elif engine.wrap_policy == "size-based":
        body += (
            "    policy = functools.partial(fsdp_wrap.size_based_auto_wrap_policy, "
            f"min_num_params={engine.min_num_params})\n"
        )
    elif engine.wrap_policy == "always":
        body += "    policy = fsdp_wrap.always_wrap_policy\n"
    return head + body + "    return FullyShardedDataParallel(model, auto_wrap_policy=policy, **common)\n"


def _optimizer_expr(case: Case, *, perturbed: bool) -> str:
    """As ``build.build_optimizer`` makes it (the load side's hyperparameters are perturbed)."""
    name, groups = optimizer_groups(case.optimizer, case.param_groups, perturbed=perturbed)
    listed = ", ".join(f"{{'params': params[{i}], **{g!r}}}" for i, g in enumerate(groups))
    return f"torch.optim.{name}([{listed}])"


def _options_literal(case: Case, side: Side) -> str:
    """The side's ``StateDictOptions`` fields beyond the state-dict type, as a dict literal."""
    options = {name: True for name in ("cpu_offload", "broadcast_from_rank0") if getattr(side, name)}
    if case.ignore_frozen_params:
        options.update(ignore_frozen_params=True, strict=False)
    return repr(options)


def _target_code(target: str, storage) -> str:
    """``_target``: the storage class of ``storage.py`` (copied) for DCP, else the user's target."""
    common = (
        "def save(state, checkpoint_dir, group):\n"
        "    _target.save(state, checkpoint_id=checkpoint_dir, process_group=group)\n\n\n"
        "def finish_save():\n"
        "    getattr(_target, 'finish_save', lambda: None)()\n\n\n"
        "def load(state, checkpoint_dir, group):\n"
        "    _target.load(state, checkpoint_id=checkpoint_dir, process_group=group)\n"
    )
    if target == DEFAULT_TARGET:
        import inspect

        from shardfuzz import storage as storage_module

        io = storage_module.storage_target(storage)
        sources = "\n\n".join(
            inspect.getsource(getattr(storage_module, name)) for name in storage_module.STORAGE_SOURCES
        )
        arguments = (
            ", ".join(f"{k}={v!r}" for k, v in (("api", io.api), *io.writer_options.items()))
            if isinstance(io, storage_module.DcpFiles)
            else ""
        )
        return (
            f"# How shardfuzz's default target writes and reads this case's checkpoint (storage.py).\n"
            f"{sources}\n\n_target = {type(io).__name__}({arguments})\n\n\n{common}"
        )
    module, _, attribute = target.partition(":")
    return (
        f"# The failure was found in this checkpoint code, not in DCP: it must be importable.\n"
        f"from {module} import {attribute} as _Target\n\n"
        f"_target = _Target() if isinstance(_Target, type) else _Target\n\n\n{common}"
    )


def _source_of(name: str) -> str:
    """A function or class of ``build.py`` copied into the script as it is: one definition to keep right."""
    import inspect

    from shardfuzz import build

    return inspect.getsource(getattr(build, name))


def _module_class_sources() -> str:
    """The module classes of ``build.py`` the scripts may use: ``Block`` (``build.BlockModule``
    renamed) and the leaves that are no torch class as they stand."""
    from shardfuzz.build import LEAF_MODULE_SOURCES

    block = _source_of("BlockModule").replace("class BlockModule(", "class Block(")
    return "\n\n".join([block, *(_source_of(name) for name in LEAF_MODULE_SOURCES), _source_of("training_batch")])


_TEMPLATE = Template('''#!/usr/bin/env python3
"""Standalone reproducer exported by shardfuzz.

${title}

Recorded: ${status}; seen on ${versions}.
Signature: ${signature}${known}

Needs only torch. Run either of:
    python ${filename}                              # spawns ${world_size} gloo rank(s) on CPU
    torchrun --nproc-per-node ${world_size} ${filename}
It prints REPRODUCED and exits 1 when the failure shows, "did not reproduce" and 0 otherwise.
Ranks 0..${save_ranks_minus} save (the save side), ranks 0..${load_ranks_minus} load (the load side).
"""

import datetime
import functools
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import state_dict as dsd
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
from torch.distributed.device_mesh import DeviceMesh

try:
    from torch.distributed.fsdp import fully_shard
except ImportError:  # torch < 2.6
    from torch.distributed._composable.fsdp import fully_shard

warnings.simplefilter("ignore", UserWarning)  # torch's FSDP chatter; delete this line to see it

WORLD_SIZE = ${world_size}
SAVE_RANKS = ${save_ranks}
LOAD_RANKS = ${load_ranks}
SAVE_MESH = ${save_mesh}  # 1-D, or 2-D (replicas, shards) for HSDP
LOAD_MESH = ${load_mesh}
SEED = ${seed}  # save side's weights and the data; the load side starts from SEED + 1
STEPS = ${steps}
BATCH_SIZE = ${batch_size}
SAME_BATCH = ${same_batch}  # the model has a BatchNorm: every rank trains on the same batches
INPUT_WIDTH = ${input_width}
NUM_EMBEDDINGS = ${num_embeddings}  # > 0: the first leaf is an Embedding, the inputs are token indices
DTYPE = "${dtype}"  # the model's parameters and the input features
FLATTEN_OPTIMIZER_STATE_DICT = ${flatten}
SAVE_STATE_DICT = ${save_type}  # 'sharded', 'full', or 'local' (FSDP1's LOCAL_STATE_DICT, optimizer sharded)
LOAD_STATE_DICT = ${load_type}
LOCAL_MAY_REFUSE = ${local_may_refuse}  # a 'local' load on another topology: a loud refusal is allowed
SAVE_OPTIONS = ${save_options}  # further StateDictOptions fields of each side
LOAD_OPTIONS = ${load_options}
# 'combined': get_state_dict/set_state_dict; 'separate': the model calls, then the optimizer calls
SAVE_API = ${save_api}
LOAD_API = ${load_api}
# ignore_frozen_params: the frozen parameters are not in the checkpoint; the load must leave them as they were
KEPT_ON_LOAD = ${kept_on_load}
ASYNC_SAVE = ${async_save}  # the save is dcp.async_save: it writes on a group of its own, waited for before the load
CHECKS = ${checks}  # optional oracles this case ran
LOAD_MUTATION = ${load_mutation}  # if set, the load side's model differs and loading must raise
SAME_SHARDING = ${same_sharding}  # continuation compares bit for bit only then
CONTINUE_STEPS = 2


${module_classes}


def build_model(seed):
    torch.manual_seed(seed)
    return ${model}


def build_load_model(seed):
    torch.manual_seed(seed)
    return ${load_model}


${device_mesh}

${shard_save}

${shard_load}
${group_parameters}

def make_optimizer(model):
    params = group_parameters(model, ${param_groups})
    return ${optimizer}


def make_load_optimizer(model):
    """Other hyperparameters than the save side's: the loaded param groups must restore them."""
    params = group_parameters(model, ${param_groups})
    return ${load_optimizer}


${target}

def train(model, optim, rank, continuation=False):
    """STEPS steps on data seeded by (SEED, step, rank); then, for continuation, CONTINUE_STEPS more
    with the same batch on every rank."""
    generator = torch.Generator()
    first, count = (STEPS, CONTINUE_STEPS) if continuation else (0, STEPS)
    for step in range(first, first + count):
        # BatchNorm's running statistics are per-rank buffers: one batch for every rank keeps them equal
        generator.manual_seed(SEED * 1_000_003 + step * 101 + (0 if continuation or SAME_BATCH else rank))
        x = training_batch(generator, batch_size=BATCH_SIZE, input_width=INPUT_WIDTH,
                           num_embeddings=NUM_EMBEDDINGS, dtype=DTYPE)
        model(x).square().mean().backward()
        optim.step()
        optim.zero_grad()


def local_state_dict_type(model):
    from torch.distributed.fsdp import FullyShardedDataParallel, StateDictType

    return FullyShardedDataParallel.state_dict_type(model, StateDictType.LOCAL_STATE_DICT)


def side_state(model, optim, kind, extra, api):
    options = StateDictOptions(full_state_dict=kind == "full",
                               flatten_optimizer_state_dict=FLATTEN_OPTIMIZER_STATE_DICT, **extra)
    if kind == "local":
        with local_state_dict_type(model):
            model_sd = model.state_dict()
        return {"model": model_sd, "optim": dsd.get_optimizer_state_dict(model, optim, options=options)}, options
    if api == "separate":
        return {"model": dsd.get_model_state_dict(model, options=options),
                "optim": dsd.get_optimizer_state_dict(model, optim, options=options)}, options
    model_sd, optim_sd = get_state_dict(model, optim, options=options)
    return {"model": model_sd, "optim": optim_sd}, options


def set_side_state(model, optim, state, options, rank):
    """The load side's setters; with broadcast_from_rank0 the others receive theirs from rank 0."""
    if options.broadcast_from_rank0 and rank != 0:
        state = {"model": {}, "optim": {}}
    if LOAD_STATE_DICT == "local":
        with local_state_dict_type(model):
            model.load_state_dict(state["model"])
        dsd.set_optimizer_state_dict(model, optim, state["optim"], options=options)
    elif LOAD_API == "separate":
        dsd.set_model_state_dict(model, state["model"], options=options)
        dsd.set_optimizer_state_dict(model, optim, state["optim"], options=options)
    else:
        dsd.set_state_dict(model, optim, model_state_dict=state["model"], optim_state_dict=state["optim"],
                           options=options)


def full_state(model, optim):
    """Everything gathered to full tensors, flat: 'model.<fqn>' and 'optim.<key>'."""
    options = StateDictOptions(full_state_dict=True, flatten_optimizer_state_dict=True)
    model_sd, optim_sd = get_state_dict(model, optim, options=options)
    flat = {f"model.{k}": v for k, v in model_sd.items()}
    flat.update({f"optim.{k}": v for k, v in optim_sd.items()})
    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in flat.items()}


def differences(expected, actual, close=None):
    """Keys missing or extra, and values that differ in dtype, shape or any bit (or beyond ``close``)."""
    found = [f"missing after load: {k}" for k in sorted(set(expected) - set(actual))]
    found += [f"extra after load: {k}" for k in sorted(set(actual) - set(expected))]
    for key in sorted(set(expected) & set(actual)):
        e, a = expected[key], actual[key]
        if isinstance(e, torch.Tensor) and isinstance(a, torch.Tensor):
            if e.dtype != a.dtype or e.shape != a.shape:
                found.append(f"{key}: {e.dtype}{list(e.shape)} saved, {a.dtype}{list(a.shape)} loaded")
            elif close is not None and e.is_floating_point():
                bad = ~torch.isclose(e.double(), a.double(), rtol=close[0], atol=close[1], equal_nan=True)
                if bad.any():
                    index = bad.nonzero()[0].tolist()
                    found.append(f"{key} at {index}: saved-side {e[tuple(index)].item()!r}, "
                                 f"load-side {a[tuple(index)].item()!r}")
            elif not torch.equal(_bits(e), _bits(a)):
                index = (_bits(e) != _bits(a)).nonzero()[0].tolist()
                found.append(f"{key} at {index}: saved {e[tuple(index)].item()!r}, "
                             f"loaded {a[tuple(index)].item()!r}")
        elif (list(e) if isinstance(e, tuple) else e) != (list(a) if isinstance(a, tuple) else a):
            found.append(f"{key}: saved {e!r}, loaded {a!r}")
    return found


def _bits(t):
    t = t.detach().contiguous()
    views = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.view(views[t.element_size()]) if t.is_floating_point() and t.numel() else t


def check(found, what):
    if found:
        raise AssertionError(f"{what}: {len(found)} difference(s); first: {found[0]}")


def flat_optim(osd):
    flat = {f"state.{fqn}.{k}": v for fqn, entry in osd.get("state", {}).items() for k, v in entry.items()}
    for i, group in enumerate(osd.get("param_groups", [])):
        flat.update({f"param_groups.{i}.{k}": v for k, v in group.items() if k != "params"})
    return flat


def api_parity(model, optim, group):
    """Two APIs over the same state must agree."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    full = StateDictOptions(full_state_dict=True)
    local = lambda v: (v.to_local() if hasattr(v, "to_local") else v).detach().clone()  # noqa: E731
    if "${save_engine}" != "FSDP1":
        prefix = "module." if "${save_engine}" == "DDP" else ""
        check(differences({k.removeprefix(prefix): local(v) for k, v in model.state_dict().items()},
                          {k: local(v) for k, v in get_model_state_dict(model).items()}),
              "api-parity: model.state_dict() vs get_model_state_dict")
        return
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    check(differences({k: local(v) for k, v in model.state_dict().items()},
                      {k: local(v) for k, v in get_model_state_dict(model, options=full).items()}),
          "api-parity: model.state_dict() vs get_model_state_dict(full)")
    fsdp_osd = FSDP.optim_state_dict(model, optim, group=group)
    dcp_osd = get_optimizer_state_dict(model, optim, options=full)
    check(differences(flat_optim(fsdp_osd), flat_optim(dcp_osd)),
          "api-parity: FSDP.optim_state_dict vs get_optimizer_state_dict(full)")
    optim.load_state_dict(FSDP.optim_state_dict_to_load(model, optim, fsdp_osd, group=group))
    check(differences(flat_optim(dcp_osd), flat_optim(get_optimizer_state_dict(model, optim, options=full))),
          "api-parity: optimizer state before vs after optim_state_dict_to_load + load_state_dict")


def full_offload(model, optim, rank, actual):
    """full_state_dict + cpu_offload: rank 0 holds every key, full-shaped, on CPU; other ranks nothing."""
    model_sd, optim_sd = get_state_dict(model, optim, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True, flatten_optimizer_state_dict=True))
    held = {f"model.{k}": v for k, v in model_sd.items()}
    held.update({f"optim.{k}": v for k, v in optim_sd.items()})
    held = {k: v for k, v in held.items() if isinstance(v, torch.Tensor)}
    if rank != 0:
        check([f"rank {rank} holds {k}" for k in held], "full-offload")
        return
    wanted = {k: v for k, v in actual.items() if isinstance(v, torch.Tensor)}
    found = [f"missing on rank 0: {k}" for k in sorted(set(wanted) - set(held))]
    found += [f"{k} on {v.device}" for k, v in held.items() if v.device.type != "cpu"]
    found += [f"{k} shaped {list(v.shape)}" for k, v in held.items() if k in wanted and v.shape != wanted[k].shape]
    check(found, "full-offload")


def round_trip(rank, checkpoint_dir):
    """This rank's part: save on ranks < SAVE_RANKS, load on ranks < LOAD_RANKS, compare on rank 0."""
    PHASE[0] = "groups"
    groups = {}
    for n in sorted({SAVE_RANKS, LOAD_RANKS}):
        groups[n] = dist.group.WORLD if n == WORLD_SIZE else dist.new_group(list(range(n)))
    PHASE[0] = "meshes"  # every rank makes them, in the same order: 2-D meshes' groups are collective
    # async_save runs its collectives in a thread while training goes on: a group of its own
    checkpoint_group = dist.new_group(list(range(SAVE_RANKS))) if ASYNC_SAVE else groups[SAVE_RANKS]
    meshes = {}
    for shape, n in ((SAVE_MESH, SAVE_RANKS), (LOAD_MESH, LOAD_RANKS)):
        if shape not in meshes:
            meshes[shape] = device_mesh(shape, groups[n], rank=rank)
    try:
        expected = None
        if rank < SAVE_RANKS:
            PHASE[0] = "build-save"
            model = shard_save(build_model(SEED), groups[SAVE_RANKS], meshes[SAVE_MESH])
            optim = make_optimizer(model)
            PHASE[0] = "train"
            train(model, optim, rank)
            PHASE[0] = "gather-saved"
            expected = full_state(model, optim)
            PHASE[0] = "save"
            state, _ = side_state(model, optim, SAVE_STATE_DICT, SAVE_OPTIONS, SAVE_API)
            save(state, checkpoint_dir, checkpoint_group)
            del state
            if "continuation" in CHECKS and LOAD_MUTATION is None:
                PHASE[0] = "continue-saved"
                train(model, optim, rank, continuation=True)
                expected_after = full_state(model, optim)
            if "api-parity" in CHECKS:
                PHASE[0] = "api-parity"
                api_parity(model, optim, groups[SAVE_RANKS])
            PHASE[0] = "finish-save"
            finish_save()
            del model, optim
        PHASE[0] = "barrier"
        dist.barrier()
        if rank < LOAD_RANKS and LOAD_MUTATION is not None:
            PHASE[0] = "build-load"
            model = shard_load(build_load_model(SEED + 1), groups[LOAD_RANKS], meshes[LOAD_MESH])
            optim = make_load_optimizer(model)
            PHASE[0] = "load-incompatible"
            try:
                state, options = side_state(model, optim, LOAD_STATE_DICT, LOAD_OPTIONS, LOAD_API)
                load(state, checkpoint_dir, groups[LOAD_RANKS])
                set_side_state(model, optim, state, options, rank)
            except BaseException as exc:  # the loud error wanted
                print(f"rank {rank}: the incompatible load raised {type(exc).__name__}, as it should")
            else:
                raise AssertionError(f"loud-incompatible-load: loading into a model with a {LOAD_MUTATION} "
                                     "mutation raised nothing")
        elif rank < LOAD_RANKS:
            PHASE[0] = "build-load"
            model = shard_load(build_model(SEED + 1), groups[LOAD_RANKS], meshes[LOAD_MESH])
            optim = make_load_optimizer(model)
            before = full_state(model, optim) if KEPT_ON_LOAD else {}
            PHASE[0] = "load"
            try:
                state, options = side_state(model, optim, LOAD_STATE_DICT, LOAD_OPTIONS, LOAD_API)
                load(state, checkpoint_dir, groups[LOAD_RANKS])
                set_side_state(model, optim, state, options, rank)
            except BaseException as exc:
                if not LOCAL_MAY_REFUSE:
                    raise
                print(f"rank {rank}: the 'local' checkpoint was refused on another topology "
                      f"({type(exc).__name__}), which is allowed: not a finding")
                os._exit(0)
            PHASE[0] = "gather-loaded"
            actual = full_state(model, optim)
            if "full-offload" in CHECKS:
                PHASE[0] = "full-offload"
                full_offload(model, optim, rank, actual)
            if "continuation" in CHECKS:
                PHASE[0] = "continue-loaded"
                train(model, optim, rank, continuation=True)
                actual_after = full_state(model, optim)
            if rank == 0:
                PHASE[0] = "compare"
                check(differences({**expected, **{k: before[k] for k in KEPT_ON_LOAD}}, actual), "complete-state")
                if "continuation" in CHECKS and (SAME_SHARDING or DTYPE != "bfloat16"):  # see oracles.py
                    check(differences(expected_after, actual_after, None if SAME_SHARDING else (1e-4, 1e-6)),
                          "continuation")
    except BaseException as exc:
        print(f"REPRODUCED on rank {rank} in {PHASE[0]}: {type(exc).__name__}: {exc}", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)  # peers may be blocked in a collective: do not wait for them
    if rank == 0:
        print("did not reproduce: the state round-tripped bit for bit")


PHASE = ["start"]  # this rank's phase, for the hang watchdog
# shardfuzz's deadline for this case, with room to spare; SHARDFUZZ_HANG_SECONDS overrides it
HANG_SECONDS = float(os.environ.get("SHARDFUZZ_HANG_SECONDS", ${hang_seconds}))


def watch_for_hang(rank):
    """A rank still running after HANG_SECONDS is stuck (in a collective its peers never join)."""
    import threading

    def expire():
        if PHASE[0] == "finish":  # done, waiting for a peer that is stuck: let that one report
            time.sleep(2)
        else:
            print(f"REPRODUCED on rank {rank}: hang: still in {PHASE[0]} after {HANG_SECONDS}s", file=sys.stderr)
            sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(HANG_SECONDS, expire)
    timer.daemon = True
    timer.start()


def finish_together(finish_group):
    """Wait for every rank on a group of its own before leaving. As in shardfuzz's warm pool, a
    rank that is done stays alive: a peer stuck in a collective with it then hangs (and the
    watchdog says where) instead of failing on a closed connection once the done rank exits."""
    PHASE[0] = "finish"
    dist.barrier(group=finish_group)


def rank_main(rank, world_size, init_file, checkpoint_dir):
    torch.set_num_threads(1)
    watch_for_hang(rank)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=300))
    finish_group = dist.new_group(backend="gloo")
    round_trip(rank, checkpoint_dir)
    finish_together(finish_group)
    dist.destroy_process_group()


def main():
    if "RANK" in os.environ:  # launched by torchrun
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
        rank = dist.get_rank()  # kept: after destroy_process_group() there is no group to ask
        watch_for_hang(rank)
        if dist.get_world_size() != WORLD_SIZE:
            sys.exit(f"run with --nproc-per-node {WORLD_SIZE}, not {dist.get_world_size()}")
        holder = [tempfile.mkdtemp(prefix="shardfuzz-repro-") if rank == 0 else None]
        dist.broadcast_object_list(holder, src=0)
        finish_group = dist.new_group(backend="gloo")
        round_trip(rank, holder[0])
        finish_together(finish_group)
        dist.destroy_process_group()
        if rank == 0:
            shutil.rmtree(holder[0], ignore_errors=True)
        return
    import torch.multiprocessing as mp

    scratch = tempfile.mkdtemp(prefix="shardfuzz-repro-")
    try:
        mp.spawn(rank_main, args=(WORLD_SIZE, os.path.join(scratch, "store"), os.path.join(scratch, "ckpt")),
                 nprocs=WORLD_SIZE, join=True)
    except Exception as exc:  # a rank exited 1 after printing REPRODUCED, or died (a signal: a crash)
        if "signal" in str(exc):
            print(f"REPRODUCED: a rank died: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
''')
