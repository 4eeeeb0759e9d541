"""What the installed torch offers, probed from its API (never from version strings).

Strategies ask this module which engines and options to draw; the ranks ask it
where to import each API from. Every "off" comes with the reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shardfuzz._fsdp2_probe import fsdp2_on_cpu_fails

__all__ = ["Capabilities", "capabilities", "common", "dtensor", "fully_shard_fn", "in_force"]


@dataclasses.dataclass(frozen=True)
class Capabilities:
    torch_version: str
    engines: tuple[str, ...]
    flatten_optimizer_state_dict: bool
    off: dict[str, str]  # feature -> why it is switched off
    hsdp: bool = False  # 2-D meshes (FSDP2 HSDP, FSDP1 hybrid strategies)
    fsdp1_subgroups: bool = False  # FSDP1 on a rank subgroup (DSD passes the group to FSDP)
    fsdp2_shard_dim: bool = False  # fully_shard(shard_placement_fn=...)
    cuda_devices: int = 0  # GPUs a --device cuda campaign may put ranks on (0: off, see off["device cuda"])
    storages: tuple[str, ...] = ("dcp-save",)  # case.dimensions' "storage" values this torch can write
    writer_options: bool = False  # FileSystemWriter(single_file_per_rank=, thread_count=, sync_files=)
    broadcast_from_rank0: bool = False  # StateDictOptions.broadcast_from_rank0
    ignore_frozen_params: bool = False  # StateDictOptions.ignore_frozen_params and strict
    local_state_dict: bool = False  # FSDP1's StateDictType.LOCAL_STATE_DICT
    activation_checkpointing: bool = False  # checkpoint_wrapper / apply_activation_checkpointing
    compile: bool = False  # torch.compile with dynamo supported here (the "eager" backend)
    held_state_dicts: bool = False  # an engine whose sharded model state dict is its parameters (not FSDP1)
    lenient_loads: bool = False  # StateDictOptions.strict and DefaultLoadPlanner(allow_partial_load=)
    low_bit_optimizers: tuple[int, ...] = ()  # torchao's AdamW<bits>bit installed (LowBitAdamW's bit widths)
    expert_parallel: bool = False  # experts split on the tp dimension: the tp engine and distribute_module

    def table(self) -> list[tuple[str, str, str]]:
        """(feature, on/off, reason) rows for ``shardfuzz capabilities``."""
        rows = [(f"engine {e}", "on", "") for e in self.engines]
        rows += [(f"storage {name}", "on", "") for name in self.storages]
        for name in (
            "flatten_optimizer_state_dict",
            "hsdp",
            "fsdp2_shard_dim",
            "fsdp1_subgroups",
            "writer_options",
            "broadcast_from_rank0",
            "ignore_frozen_params",
            "local_state_dict",
            "activation_checkpointing",
            "compile",
            "held_state_dicts",
            "lenient_loads",
            "expert_parallel",
        ):
            if getattr(self, name):
                rows.append((name, "on", _WHY_ON.get(name, "")))
        rows.append(("resumes", "on", "a second round-trip needs nothing a first one does not"))
        rows.append(("gradless_params", "on", "gradients set to None before a step: any torch"))
        rows.append(("empty_param_group", "on", "torch.optim takes a param group without parameters"))
        rows.append(("late_param_group", "on", "Optimizer.add_param_group after the load: any torch"))
        in_flight = "in flight beside the first where dcp-async is on" if "dcp-async" in self.storages else "in turn"
        rows.append(("second_save", "on", f"a second save before the first is waited for: {in_flight}"))
        rows.append(
            (
                "group_without_rank0",
                "on",
                "sides on the ranks from a global rank above 0 (new_group): on a pool with a rank to spare",
            )
        )
        if self.low_bit_optimizers:
            widths = ", ".join(f"AdamW{bits}bit" for bits in self.low_bit_optimizers)
            rows.append(("low_bit_optimizers", "on", f"torchao's {widths} (optimizer state in tensor subclasses)"))
        if self.cuda_devices:
            rows.append(("device cuda", "on", f"{self.cuda_devices} GPU(s), NCCL"))
        rows += [(name, "off", why) for name, why in sorted(self.off.items())]
        return rows


def _find(candidates: list[tuple[str, str]]) -> Any | None:
    for module, attr in candidates:
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
    return None


@functools.cache
def fully_shard_fn() -> Callable | None:
    """FSDP2's ``fully_shard``: public since torch 2.6, ``_composable.fsdp`` before."""
    return _find(
        [
            ("torch.distributed.fsdp", "fully_shard"),
            ("torch.distributed._composable.fsdp", "fully_shard"),
        ]
    )


def dtensor():
    """The module with ``DTensor``, ``Shard`` and ``Replicate`` (see ``sharding.dtensor``)."""
    from shardfuzz.rank.portable.sharding import dtensor as find

    return find()


_IN_FORCE: list[Capabilities] = []  # innermost last: what ``in_force`` set


def capabilities() -> Capabilities:
    """What the strategies may draw: the installed torch's probe (cached), or what ``in_force`` set."""
    return _IN_FORCE[-1] if _IN_FORCE else _installed()


@contextlib.contextmanager
def in_force(caps: Capabilities):
    """``capabilities()`` answers ``caps`` inside (a cross-version campaign draws what both torches offer).

    For the process that draws cases only: ranks probe their own torch."""
    _IN_FORCE.append(caps)
    try:
        yield caps
    finally:
        _IN_FORCE.remove(caps)


#: What an "on" row says where the feature has a condition a reader should know.
_WHY_ON = {
    "held_state_dicts": "drawn on FSDP2, TP, DDP and unsharded sides with sharded (DDP: any) state dicts; FSDP1's "
    "and full or offloaded ones are copies (unsupported: held-state-dict-is-a-copy)",
    "lenient_loads": "strict=False with DCP's allow_partial_load, for targets with load_partial",
    "expert_parallel": "a TP plan's experts style: grouped experts split on the expert dimension (distribute_module)",
}

_BOOLEAN_FEATURES = (
    "expert_parallel",
    "flatten_optimizer_state_dict",
    "hsdp",
    "fsdp1_subgroups",
    "fsdp2_shard_dim",
    "writer_options",
    "broadcast_from_rank0",
    "ignore_frozen_params",
    "local_state_dict",
    "activation_checkpointing",
    "compile",
    "held_state_dicts",
    "lenient_loads",
)


def common(save: Capabilities, load: Capabilities) -> Capabilities:
    """What a case saved under one torch and loaded under another may use: what both offer.

    ``off`` says, for each feature one side lacks, which side and why (``left out: ...``)."""
    off: dict[str, str] = {}
    for side, caps, other in (("save", save, load), ("load", load, save)):
        for feature, why in caps.off.items():
            if feature not in other.off:
                off[feature] = f"left out: the {side} side's torch {caps.torch_version} lacks it ({why})"
            else:
                off.setdefault(feature, f"off in both torches ({why})")
    engines = tuple(e for e in save.engines if e in load.engines)
    for engine in {*save.engines, *load.engines} - set(engines):
        lacking = "save" if engine not in save.engines else "load"
        off.setdefault(f"engine {engine}", f"left out: the {lacking} side's torch lacks it")
    storages = tuple(s for s in save.storages if s in load.storages)
    for storage in {*save.storages, *load.storages} - set(storages):
        lacking = "save" if storage not in save.storages else "load"
        off.setdefault(f"storage {storage}", f"left out: the {lacking} side's torch lacks it")
    flags = {name: getattr(save, name) and getattr(load, name) for name in _BOOLEAN_FEATURES}
    for name, on in flags.items():
        if not on and name not in off:
            lacking = "save" if not getattr(save, name) else "load"
            off[name] = f"left out: the {lacking} side's torch lacks it"
    low_bit = tuple(bits for bits in save.low_bit_optimizers if bits in load.low_bit_optimizers)
    if save.low_bit_optimizers != load.low_bit_optimizers:
        off.setdefault("low_bit_optimizers", "left out where the two environments' torchao differ")
    return Capabilities(
        torch_version=f"{save.torch_version} -> {load.torch_version}",
        engines=engines,
        off=off,
        low_bit_optimizers=low_bit,
        cuda_devices=min(save.cuda_devices, load.cuda_devices),
        storages=storages,
        **flags,
    )


@functools.cache
def _installed() -> Capabilities:
    import torch

    off: dict[str, str] = {}
    if _find([("torch.distributed.checkpoint.state_dict", "get_state_dict")]) is None:
        raise RuntimeError(
            f"torch {torch.__version__} has no torch.distributed.checkpoint.state_dict helpers; "
            "shardfuzz needs torch >= 2.4"
        )
    engines, hsdp, shard_dim, subgroups = _engines(off)
    flatten, broadcast, ignore_frozen, local = _state_dict_options(engines, off)
    gpus, why_no_gpu = _cuda_devices()
    if why_no_gpu:
        off["device cuda"] = why_no_gpu
    storages, writer_options = _storages(off)
    checkpointing = (
        _find([("torch.distributed.algorithms._checkpoint.checkpoint_wrapper", "apply_activation_checkpointing")])
        is not None
    )
    if not checkpointing:
        off["activation_checkpointing"] = "no apply_activation_checkpointing in torch.distributed.algorithms"
    compiles, why_not = _compiles()
    if not compiles:
        off["compile"] = why_not
    held = bool(set(engines) - {"fsdp1"})
    if not held:
        off["held_state_dicts"] = "every engine here is FSDP1, whose model state dicts are copies"
    lenient = _lenient_loads(ignore_frozen, off)
    low_bit = _low_bit_optimizers(off)
    distribute = [("torch.distributed.tensor", "distribute_module"), ("torch.distributed._tensor", "distribute_module")]
    expert_parallel = "tp" in engines and _find(distribute) is not None
    if not expert_parallel:
        off["expert_parallel"] = "no tp engine, or no torch.distributed.tensor.distribute_module"
    return Capabilities(
        torch.__version__,
        tuple(engines),
        flatten,
        off,
        hsdp=hsdp,
        fsdp2_shard_dim=shard_dim,
        fsdp1_subgroups=subgroups,
        cuda_devices=gpus,
        storages=storages,
        writer_options=writer_options,
        broadcast_from_rank0=broadcast,
        ignore_frozen_params=ignore_frozen,
        local_state_dict=local,
        activation_checkpointing=checkpointing,
        compile=compiles,
        held_state_dicts=held,
        lenient_loads=lenient,
        low_bit_optimizers=low_bit,
        expert_parallel=expert_parallel,
    )


def _low_bit_optimizers(off: dict[str, str]) -> tuple[int, ...]:
    """The bit widths of torchao's low-bit AdamW that are installed, found without importing torchao (its import
    loads native libraries: seconds, in every process that asks)."""
    import importlib.util
    from importlib.metadata import PackageNotFoundError, version

    spec = importlib.util.find_spec("torchao")
    if spec is None or not spec.submodule_search_locations:
        off["low_bit_optimizers"] = "torchao is not installed (pip install 'shardfuzz[torchao]')"
        return ()
    package = Path(next(iter(spec.submodule_search_locations)))
    optim = package / "optim"
    found = tuple(bits for bits in (8, 4) if (optim / f"subclass_{bits}bit.py").exists())
    if not found:
        try:
            installed = version("torchao")
        except PackageNotFoundError:
            installed = "unknown"
        off["low_bit_optimizers"] = f"torchao {installed} has no torchao.optim low-bit AdamW"
    return found


def _lenient_loads(strict_option: bool, off: dict[str, str]) -> bool:
    """Whether a load can be lenient: ``StateDictOptions.strict`` and ``DefaultLoadPlanner(allow_partial_load=)``."""
    import inspect

    planner = _find([("torch.distributed.checkpoint.default_planner", "DefaultLoadPlanner")])
    partial = planner is not None and "allow_partial_load" in inspect.signature(planner).parameters
    if not (strict_option and partial):
        off["lenient_loads"] = "StateDictOptions has no strict, or DefaultLoadPlanner no allow_partial_load"
    return strict_option and partial


def _engines(off: dict[str, str]) -> tuple[list[str], bool, bool, bool]:
    """The engines this torch offers, and whether it builds HSDP's 2-D meshes, shards FSDP2 on a dim other
    than 0, and runs FSDP1 on a rank subgroup; each one it lacks goes into ``off`` with why."""
    import inspect

    engines: list[str] = []
    if _find([("torch.distributed.fsdp", "FullyShardedDataParallel")]) is not None:
        engines.append("fsdp1")
    else:
        off["engine fsdp1"] = "torch.distributed.fsdp.FullyShardedDataParallel is missing"
    from_group = _find([("torch.distributed.device_mesh", "DeviceMesh")])
    if fully_shard_fn() is None:
        off["engine fsdp2"] = "no fully_shard in torch.distributed.fsdp or torch.distributed._composable.fsdp"
    elif from_group is None or not hasattr(from_group, "from_group"):
        off["engine fsdp2"] = "DeviceMesh.from_group is missing (needed to shard on rank subgroups)"
    else:
        broken = fsdp2_on_cpu_fails()
        if broken:
            off["engine fsdp2"] = f"fully_shard fails on CPU ranks in this torch ({broken})"
        else:
            engines.append("fsdp2")

    engines += ["ddp", "unsharded"]  # DistributedDataParallel and a plain module: always there

    hsdp = from_group is not None and "mesh" in inspect.signature(from_group.from_group).parameters
    if not hsdp:
        off["hsdp"] = "DeviceMesh.from_group takes no mesh= (needed to build 2-D meshes on rank subgroups)"
    if _find([("torch.distributed.tensor.parallel", "parallelize_module")]) is None:
        off["engine tp"] = "no torch.distributed.tensor.parallel.parallelize_module"
    elif not (hsdp and "fsdp2" in engines):
        off["engine tp"] = "tensor parallelism is drawn on 2-D meshes with FSDP2 across dp: this torch lacks one"
    else:
        engines.append("tp")
    stage = _find([("torch.distributed.pipelining", "PipelineStage")])
    infers = stage is not None and inspect.signature(stage).parameters["input_args"].default is None  # 2.4 needs them
    if infers and hsdp and "fsdp2" in engines:
        engines.append("pp")
    else:
        off["engine pp"] = "no PipelineStage that infers its shapes (input_args=None), or no 2-D meshes with FSDP2"
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:  # found, not imported: importing it takes seconds
        engines.append("zero")  # drawn only for a target that names it (the deepspeed target)
    else:
        off["engine zero"] = "DeepSpeed is not installed (pip install 'shardfuzz[deepspeed]')"
    fully_shard = fully_shard_fn()
    shard_dim = (
        "fsdp2" in engines
        and fully_shard is not None
        and "shard_placement_fn" in inspect.signature(fully_shard).parameters
    )
    if "fsdp2" in engines and not shard_dim:
        off["fsdp2_shard_dim"] = "fully_shard has no shard_placement_fn (sharding on a dim other than 0)"

    import torch.distributed.checkpoint.state_dict as dsd

    # Before DSD had _get_fsdp_process_group, get_state_dict ran FSDP.optim_state_dict on the
    # default group: FSDP1 on a subgroup of the world hangs there (seen on torch 2.6 and 2.10).
    subgroups = "fsdp1" in engines and hasattr(dsd, "_get_fsdp_process_group")
    if "fsdp1" in engines and not subgroups:
        off["fsdp1_subgroups"] = (
            "get_state_dict gathers FSDP1 optimizer state on the default group "
            "(no _get_fsdp_process_group in DSD), so FSDP1 on a rank subgroup hangs; "
            "FSDP1 sides span the whole pool"
        )
    return engines, hsdp, shard_dim, subgroups


def _state_dict_options(engines: list[str], off: dict[str, str]) -> tuple[bool, bool, bool, bool]:
    """Whether ``StateDictOptions`` has ``flatten_optimizer_state_dict``, ``broadcast_from_rank0`` and
    ``ignore_frozen_params`` (with ``strict``), and whether FSDP1 has ``LOCAL_STATE_DICT``; each one it
    lacks goes into ``off`` with why."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    fields = {f.name for f in dataclasses.fields(StateDictOptions)}
    flatten = "flatten_optimizer_state_dict" in fields
    if not flatten:
        off["flatten_optimizer_state_dict"] = "StateDictOptions has no flatten_optimizer_state_dict field"
    broadcast = "broadcast_from_rank0" in fields
    if not broadcast:
        off["broadcast_from_rank0"] = "StateDictOptions has no broadcast_from_rank0 field"
    ignore_frozen = {"ignore_frozen_params", "strict"} <= fields
    if not ignore_frozen:
        off["ignore_frozen_params"] = "StateDictOptions lacks ignore_frozen_params or strict"
    local = "fsdp1" in engines and hasattr(
        _find([("torch.distributed.fsdp", "StateDictType")]) or object, "LOCAL_STATE_DICT"
    )
    if not local:
        off["local_state_dict"] = "no FSDP1 engine, or its StateDictType has no LOCAL_STATE_DICT"
    return flatten, broadcast, ignore_frozen, local


def _compiles() -> tuple[bool, str]:
    """Whether ``torch.compile`` (dynamo, the ``eager`` backend: no code generation) runs here, or why not."""
    import torch

    if not hasattr(torch, "compile"):
        return False, "torch has no torch.compile"
    try:
        import torch._dynamo

        supported = torch._dynamo.is_dynamo_supported()
    except Exception as exc:  # an import error of a broken install, say
        return False, f"torch._dynamo cannot be used: {type(exc).__name__}: {exc}"
    return (True, "") if supported else (False, "torch._dynamo.is_dynamo_supported() is False on this Python")


def _storages(off: dict[str, str]) -> tuple[tuple[str, ...], bool]:
    """The ``Case.storage`` kinds (as ``dimensions`` labels them) the installed DCP offers, and
    whether ``FileSystemWriter`` takes the options the strategies vary; records what is off."""
    import inspect

    import torch.distributed.checkpoint as dcp

    storages = ["dcp-save", "torch-save"]
    if all(hasattr(dcp, name) for name in ("save_state_dict", "load_state_dict")):
        storages.append("dcp-legacy")
    else:
        off["storage dcp-legacy"] = "torch.distributed.checkpoint has no save_state_dict/load_state_dict"
    if hasattr(dcp, "async_save"):
        storages.append("dcp-async")
    else:
        off["storage dcp-async"] = "torch.distributed.checkpoint has no async_save"
    if _find([("torch.distributed.checkpoint.format_utils", "dcp_to_torch_save")]) is not None:
        storages.append("dcp-to-torch-save")
    else:
        off["storage dcp-to-torch-save"] = "no torch.distributed.checkpoint.format_utils.dcp_to_torch_save"
    storages += _hf_storages(off)
    wanted = {"single_file_per_rank", "thread_count", "sync_files"}
    writer_options = wanted <= set(inspect.signature(dcp.FileSystemWriter.__init__).parameters)
    if not writer_options:
        off["writer_options"] = f"FileSystemWriter takes no {sorted(wanted)}"
    return tuple(storages), writer_options


def _hf_storages(off: dict[str, str]) -> list[str]:
    """DCP's Hugging Face safetensors storage, where torch has its writer (with ``save_distributed``, and
    ``enable_consolidation`` for the consolidated kind) and the ``safetensors`` package is installed."""
    import importlib.util
    import inspect

    writer: Any = _find([("torch.distributed.checkpoint", "HuggingFaceStorageWriter")])
    why = ""
    if writer is None or _find([("torch.distributed.checkpoint", "HuggingFaceStorageReader")]) is None:
        why = "torch.distributed.checkpoint has no HuggingFaceStorageWriter/Reader"
    elif importlib.util.find_spec("safetensors") is None:
        why = "the safetensors package is not installed (pip install safetensors)"
    elif "save_distributed" not in inspect.signature(writer.__init__).parameters:
        why = "HuggingFaceStorageWriter takes no save_distributed (every rank writing its shards)"
    if why:
        off["storage hf-safetensors"] = off["storage hf-safetensors-consolidated"] = why
        return []
    if "enable_consolidation" not in inspect.signature(writer.__init__).parameters:
        off["storage hf-safetensors-consolidated"] = "HuggingFaceStorageWriter takes no enable_consolidation"
        return ["hf-safetensors"]
    return ["hf-safetensors", "hf-safetensors-consolidated"]


def _cuda_devices() -> tuple[int, str]:
    """``(GPUs usable with NCCL, '')``, or ``(0, why not)``."""
    import torch
    import torch.distributed as dist

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        return 0, f"torch.cuda.is_available() is False (torch {torch.__version__}, {build})"
    if not dist.is_nccl_available():
        return 0, "this torch has no NCCL backend (torch.distributed.is_nccl_available() is False)"
    return torch.cuda.device_count(), ""
