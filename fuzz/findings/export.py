"""A corpus entry as one standalone Python script that needs only torch: the file for a bug report.

The script is assembled, not written by hand: the case's values as constants and
its model as ``nn.Sequential(...)`` literals (from each leaf's ``LayerCall``), then
the definitions of ``layers``, ``sharding``, ``rank_steps`` and ``bits`` (the torch
steps the pool's ranks run) copied as they are, each after the ones it uses, the
checkpoint I/O, and the run of ``repro_script`` (the order of the steps, the judge)
and ``launcher``, copied as they are.
It runs under ``torchrun --nproc-per-node N`` or as ``python repro.py`` (it spawns
its own gloo ranks), prints ``REPRODUCED`` and exits 1 when the failure shows, and
prints ``did not reproduce`` and exits 0 when it does not.
"""

from __future__ import annotations

import inspect

from shardfuzz.case import (
    MODULE_TYPE_CLASSES,
    Case,
    Leaf,
    Model,
    Sequential,
    UserModel,
    ZeRO,
    child_items,
    optimizer_groups,
)
from shardfuzz.executor.deadlines import deadline_for
from shardfuzz.findings.corpus import Entry
from shardfuzz.rank import oracles
from shardfuzz.rank.build import engine_fields, training_fields
from shardfuzz.rank.portable import bits, handoff, launcher, layers, optimizers, sharding, zero
from shardfuzz.rank.portable import script as repro_script
from shardfuzz.rank.portable import steps as rank_steps
from shardfuzz.rank.roundtrip import CONTINUE_STEPS, options_extra, side_description
from shardfuzz.targets import DEFAULT_TARGET, FAULT_SEPARATOR, SHIPPED_TARGETS, ObjectTarget, resolve_target

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
    return "\n\n\n".join(
        [
            _head(entry, filename),
            _constants(
                case,
                world_size=_world_size(entry),
                hang_seconds=round(deadline_for(case) * 1.5),
                object_target=_is_object_target(entry.target),
                torches=entry.torches,
            ),
            _model_functions(case),
            _definitions(layers, "the model's own module classes"),
            _definitions(sharding, "how a side shards its model, as the pool's ranks do it"),
            _definitions(zero, "DeepSpeed's ZeRO engine on a side (the deepspeed target's cases)"),
            _definitions(optimizers, "the optimizer a side builds and the parameters a loop pattern picks"),
            _definitions(rank_steps, "the torch steps of a round-trip, as the pool's ranks run them"),
            _definitions(bits, "the bitwise comparison the oracles use"),
            _definitions(handoff, "the saved state a save run hands the load run (--phase save, then load)"),
            _target_code(entry.target, case.storage),
            _definitions(repro_script, "the run: the steps in the pool's order, the judge", repro_script.RUN),
            _definitions(launcher, "the launcher: gloo ranks of its own or torchrun's, the hang watchdog, --phase"),
            'if __name__ == "__main__":\n    main()\n',
        ]
    )


def _is_object_target(spec: str) -> bool:
    """Whether the entry's target takes over the objects' save and load (it is imported to see; one
    that cannot be imported here is taken for a state-dict target, as before object-level targets)."""
    if spec == DEFAULT_TARGET:
        return False
    try:
        return isinstance(resolve_target(spec), ObjectTarget)
    except ValueError:
        return False


def case_constants(
    case: Case,
    *,
    world_size: int,
    hang_seconds: int,
    object_target: bool = False,
    torches: tuple[str, str] | None = None,
) -> dict[str, object]:
    """The value of each of ``repro_script.CASE_CONSTANTS`` for ``case`` on ``world_size`` ranks (the
    pool's size where the failure was seen: idle ranks can matter, as for a hang); ``torches``: the
    (save, load) torches of an entry found across two."""
    save, load = case.save, case.load
    return {
        "WORLD_SIZE": world_size,
        "RANKS_FROM": case.loop.ranks_from,
        "SAVE_RANKS": save.world_size,
        "LOAD_RANKS": load.world_size,
        "SAVE_MESH": tuple(save.mesh_shape),
        "LOAD_MESH": tuple(load.mesh_shape),
        "SEED": case.seed,
        "STEPS": case.steps,
        "CONTINUE_STEPS": CONTINUE_STEPS,
        "BATCH_SIZE": case.batch_size,
        "SAME_BATCH": case.model.has_batch_norm,
        "INPUT_WIDTH": case.model.input_width,
        "NUM_EMBEDDINGS": case.model.num_embeddings,
        "DTYPE": case.model.dtype,
        "COMPUTE_DTYPE": case.compute_dtype,
        "SAVE_ENGINE": engine_fields(save.engine),
        "LOAD_ENGINE": engine_fields(load.engine),
        "SAVE_WRAP": list(save.wrap),
        "LOAD_WRAP": list(load.wrap),
        "SAVE_WRAP_INNERMOST_FIRST": save.wrap_innermost_first,
        "LOAD_WRAP_INNERMOST_FIRST": load.wrap_innermost_first,
        "MODULE_TYPE_CLASSES": {
            name: cls
            for name, cls in MODULE_TYPE_CLASSES.items()
            if name in {*getattr(save.engine, "module_types", ()), *getattr(load.engine, "module_types", ())}
        },
        "SAVE_WRAPPERS": save.wrappers,
        "LOAD_WRAPPERS": load.wrappers,
        "SAVE_OPTIMIZER": (*optimizer_groups(case.optimizer, case.param_groups), *_groups_beyond(case)),
        "LOAD_OPTIMIZER": (*optimizer_groups(case.optimizer, case.param_groups, perturbed=True), *_groups_beyond(case)),
        "FLATTEN_OPTIMIZER_STATE_DICT": case.flatten_optimizer_state_dict,
        "SAVE_STATE_DICT": save.state_dict,
        "LOAD_STATE_DICT": load.state_dict,
        "SAVE_API": save.state_dict_api,
        "LOAD_API": load.state_dict_api,
        "SAVE_OPTIONS": options_extra(case, save),
        "LOAD_OPTIONS": options_extra(case, load),
        "LOCAL_MAY_REFUSE": case.local_may_refuse,
        "KEPT_ON_LOAD": case.kept_by_load(),
        "SAVE_HELD": case.loop.save_held,
        "LOAD_HELD": case.loop.load_held,
        "RESUMES": case.loop.resumes,
        "LENIENT": case.loop.lenient,
        "GRADLESS": case.loop.gradless,
        "LATE_GROUP": case.loop.late_group,
        "SAVES_MODEL_ONLY": case.storage.model_only,
        "LOADS_MODEL_ONLY": case.loads_model_only,
        "ASYNC_SAVE": case.saves_async,
        "SECOND_SAVE": case.loop.second_save,
        "CHECKS": set(case.checks),
        "LOAD_MUTATION": case.load_mutation,
        "SAME_SHARDING": case.same_sharding,
        "CONTINUATION_TOLERANCE": oracles.CONTINUATION_TOLERANCE,
        "ACROSS_TORCHES_TOLERANCE": oracles.ACROSS_TORCHES_TOLERANCE,
        "NO_TOLERANCE_DTYPES": oracles.NO_TOLERANCE_DTYPES,
        "OBJECT_TARGET": object_target,
        "SAVE_SIDE": side_description(case, save),
        "LOAD_SIDE": side_description(case, load),
        "TRAINING": training_fields(case.training),
        "SAVE_TORCH": torches[0] if torches else "",
        "LOAD_TORCH": torches[1] if torches else "",
        "HANG_SECONDS": hang_seconds,
    }


#: What a reader of the script needs to know about a constant.
_COMMENTS = {
    "WORLD_SIZE": "ranks in the world: the side's own, and the idle ranks of the pool that saw the failure",
    "RANKS_FROM": "the global rank the case's ranks start from: from 1 on, no side's group holds global rank 0",
    "SAVE_MESH": "1-D, or 2-D (replicas, shards) for HSDP",
    "SEED": "save side's weights and the data; the load side starts from SEED + 1",
    "SAME_BATCH": "the model has a BatchNorm: every rank trains on the same batches",
    "NUM_EMBEDDINGS": "> 0: the first leaf is an Embedding, the inputs are token indices",
    "DTYPE": "the model's parameters and the input features",
    "COMPUTE_DTYPE": "what training computes in: bfloat16 where a side uses FSDP mixed precision",
    "SAVE_ENGINE": "how each side shards: sharding.shard_module reads these fields",
    "MODULE_TYPE_CLASSES": "FSDP1's module-type policy: the classes it names",
    "SAVE_WRAPPERS": "activation checkpointing of some leaves (before or after sharding), torch.compile, "
    "a model built on the meta device, FSDP mixed precision and parameter offload",
    "SAVE_OPTIMIZER": "torch.optim class, one hyperparameter dict per param group, whether one more group is empty, "
    "and whether the first module's parameters wait for LATE_GROUP",
    "LATE_GROUP": "the first module's parameters join the optimizer in a group of their own after the save and load",
    "GRADLESS": "when the first module's parameters get no gradient (never, always, first-step)",
    "LOAD_OPTIMIZER": "other hyperparameters: the loaded param groups must restore the saved ones",
    "SAVE_STATE_DICT": "'sharded', 'full', or 'local' (FSDP1's LOCAL_STATE_DICT, optimizer sharded)",
    "SAVE_API": "'combined': get_state_dict/set_state_dict; 'separate': the model calls, then the optimizer calls",
    "SAVE_OPTIONS": "further StateDictOptions fields of each side",
    "LOCAL_MAY_REFUSE": "a 'local' load on another topology: a loud refusal is allowed",
    "KEPT_ON_LOAD": "not in the checkpoint (ignore_frozen_params, a lenient load's new layer): left as they were",
    "SAVE_HELD": "the save side hands save the model state dict it took right after building",
    "LOAD_HELD": "the load side loads into a model state dict taken at build, and saves it again",
    "RESUMES": "2: the load side trains on, saves again, and the save side's layout loads that",
    "LENIENT": "the load side has one more Linear and loads its model alone, strict=False (allow_partial_load)",
    "SAVES_MODEL_ONLY": "the checkpoint holds the model's state dict alone (a safetensors format of tensors only)",
    "LOADS_MODEL_ONLY": "the load side loads its model alone; its optimizer must stay as built",
    "ASYNC_SAVE": "dcp.async_save: it writes on a group of its own, waited for before the load",
    "SECOND_SAVE": "after training on, the save side saves again (to 'second') before the first is waited for",
    "CHECKS": "optional oracles this case ran",
    "LOAD_MUTATION": "if set, the load side's model differs and loading must raise",
    "SAME_SHARDING": "continuation compares bit for bit only then, else within CONTINUATION_TOLERANCE",
    "HANG_SECONDS": "shardfuzz's deadline for this case, with room to spare",
    "OBJECT_TARGET": "the target takes over the save and load of the objects (save_objects/load_objects)",
    "SAVE_SIDE": "each side as an object-level target is told it",
    "TRAINING": "an LR scheduler (and a gradient scaler) saved as a Stateful beside the model and optimizer",
    "SAVE_TORCH": "found saving under this torch and loading under LOAD_TORCH ('': one torch did both)",
}


def _groups_beyond(case: Case) -> tuple[bool, bool]:
    """``make_optimizer``'s last two arguments: one more, empty, param group; the loop's late one held back."""
    return case.loop.empty_group, case.loop.late_group


def _world_size(entry: Entry) -> int:
    """The script's world: the entry's replay world, or for a DeepSpeed case its sides' own size (DeepSpeed meets on
    the default process group, so a ZeRO side fills its world). ``ValueError`` for ZeRO sides of two sizes: shardfuzz
    runs those on a pool each, and a script has one world."""
    case = entry.case
    if not any(isinstance(side.engine, ZeRO) for side in (case.save, case.load)):
        return entry.replay_world_size
    if case.consolidates_zero:  # zero_to_fp32 reads the files on the load side's one rank: no collective of DeepSpeed's
        return case.save.world_size
    if case.save.world_size != case.load.world_size:
        raise ValueError(
            f"the case's sides run on {case.save.world_size} and {case.load.world_size} ranks, and DeepSpeed meets on "
            "the default process group, so each needs a world of its own size: a script has one world (replay it "
            "with shardfuzz replay, which runs a pool a side size)"
        )
    return case.save.world_size


def _constants(case: Case, *, world_size: int, hang_seconds: int, object_target: bool, torches=None) -> str:
    values = case_constants(
        case, world_size=world_size, hang_seconds=hang_seconds, object_target=object_target, torches=torches
    )
    lines = []
    for name in repro_script.CASE_CONSTANTS:
        value = repr(values[name]) if values[name] != set() else "set()"
        if name == "HANG_SECONDS":
            value = f'float(os.environ.get("SHARDFUZZ_HANG_SECONDS", {value}))'
        comment = f"  # {_COMMENTS[name]}" if name in _COMMENTS else ""
        lines.append(f"{name} = {value}{comment}")
    lines.append('PHASE = ["start"]  # this rank\'s phase, for the hang watchdog')
    return "\n".join(lines)


def _model_functions(case: Case) -> str:
    if isinstance(case.model, UserModel):
        module, _, function = case.model.factory.partition(":")
        return (
            f"# The user's model (--model {case.model.factory}): run this script where that imports.\n"
            "sys.path.insert(0, os.getcwd())\n\n\n"
            "def _user_factory():\n"
            "    import importlib\n\n"
            f"    return importlib.import_module({module!r}).{function}\n\n\n"
            "def build_model(seed):\n    torch.manual_seed(seed)\n    made = _user_factory()()\n"
            "    return made[0] if isinstance(made, tuple) else made\n\n\n"
            "build_load_model = build_model\n\n\n"
            "def user_batch():\n    with torch.device('meta'):\n        made = _user_factory()()\n"
            "    return made[1] if isinstance(made, tuple) else made.example_batch\n"
        )
    load_model = case.load_model()
    assert isinstance(case.model, Model) and isinstance(load_model, Model)
    return (
        f"def build_model(seed):\n    torch.manual_seed(seed)\n    return {_model_expr(case.model)}\n\n\n"
        f"def build_load_model(seed):\n    torch.manual_seed(seed)\n    return {_model_expr(load_model)}\n\n\n"
        "def user_batch():\n    return None\n"
    )


def _model_expr(model: Model) -> str:
    """Python source building ``model``'s tree (cast to its dtype), from each leaf's ``LayerCall``."""
    text = _module_expr(model.root, model.input_width, indent=4)[0]
    return text if model.dtype == "float32" else f"{text}.to(torch.{model.dtype})"


def _module_expr(node, width: int, indent: int) -> tuple[str, int]:
    """Python source building ``node`` fed ``width`` features, and the width it outputs."""
    if isinstance(node, Leaf):
        call = node.layer(width)
        arguments = [repr(a) for a in call.args] + [f"{k}={v!r}" for k, v in call.kwargs.items()]
        frozen = ".requires_grad_(False)" if call.frozen else ""
        return f"{call.cls}({', '.join(arguments)}){frozen}", node.output_width(width)
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


def _definitions(module, what: str, names: list[str] | None = None) -> str:
    """The definitions of ``names`` (default: the module's ``__all__``) as they are in ``module``."""
    sources = [inspect.getsource(getattr(module, name)).rstrip("\n") for name in names or module.__all__]
    title = f"# --- {what} ({module.__name__.replace('.', '/')}.py) "
    return title.ljust(100, "-") + "\n\n\n" + "\n\n\n".join(sources)


def _target_code(target: str, storage) -> str:
    """``_target``: the storage class of ``storage.py`` (copied) for DCP, else the user's target."""
    common = (
        "def save(state, checkpoint_dir, group):\n"
        "    _target.save(state, checkpoint_id=checkpoint_dir, process_group=group)\n\n\n"
        "def finish_save():\n"
        "    getattr(_target, 'finish_save', lambda: None)()\n\n\n"
        "def load(state, checkpoint_dir, group):\n"
        "    _target.load(state, checkpoint_id=checkpoint_dir, process_group=group)\n\n\n"
        "def load_partial(state, checkpoint_dir, group):  # a lenient load: what the checkpoint lacks stays\n"
        "    _target.load_partial(state, checkpoint_id=checkpoint_dir, process_group=group)\n"
    )
    if target in (DEFAULT_TARGET, "dcp"):
        import inspect

        from shardfuzz.rank.checkpoint_io import storage_target
        from shardfuzz.rank.portable import checkpoint_files as storage_module

        io = storage_target(storage)
        sources = "\n\n".join(
            inspect.getsource(getattr(storage_module, name)) for name in storage_module.STORAGE_SOURCES
        )
        arguments = ""
        if isinstance(io, storage_module.DcpFiles):
            arguments = ", ".join(f"{k}={v!r}" for k, v in (("api", io.api), *io.writer_options.items()))
        elif isinstance(io, storage_module.HfFiles):
            arguments = f"consolidated={io.consolidated!r}"
        return (
            f"# How shardfuzz's default target writes and reads this case's checkpoint (rank/portable/checkpoint_files.py).\n"
            f"{sources}\n\n_target = {type(io).__name__}({arguments})\n\n\n{common}"
        )
    if target in SHIPPED_TARGETS:
        return f"{_adapter_code(SHIPPED_TARGETS[target])}\n\n{common}"
    if ":" not in target or FAULT_SEPARATOR in target:
        return (
            f"# The failure was found in this checkpoint code, not in DCP: a shardfuzz target named by its short\n"
            f"# name (a shipped framework adapter, an entry point) or with a fault injected, so shardfuzz and\n"
            f"# the framework must be installed.\n"
            f"from shardfuzz.targets import resolve_target\n\n"
            f"_target = resolve_target({target!r})\n\n\n{common}"
        )
    module, _, attribute = target.partition(":")
    return (
        f"# The failure was found in this checkpoint code, not in DCP: it must be importable.\n"
        f"from {module} import {attribute} as _Target\n\n"
        f"_target = _Target() if isinstance(_Target, type) else _Target\n\n\n{common}"
    )


def _adapter_code(spec: str) -> str:
    """A shipped framework adapter (``shardfuzz/targets/adapters/``) copied as it is, so that the script needs the
    framework and torch but not shardfuzz: its shardfuzz imports give way to the two helpers it uses,
    copied too, and a stand-in for the ``TargetSupport`` declaration (what shardfuzz draws for it)."""
    import importlib

    from shardfuzz.targets import adapters

    module_name, _, attribute = spec.partition(":")
    source = inspect.getsource(importlib.import_module(module_name))
    kept = [line for line in source.splitlines() if not line.startswith(("from shardfuzz", "from __future__"))]
    helpers = "\n\n".join(inspect.getsource(getattr(adapters, name)) for name in adapters.__all__)
    title = f"# --- the framework adapter ({module_name.replace('.', '/')}.py) "
    return (
        f"{title.ljust(100, '-')}\n\n\n{helpers}\n\n"
        "def TargetSupport(**fields):  # shardfuzz's declaration of the cases the adapter runs; not used here\n"
        "    return fields\n\n" + "\n".join(kept) + f"\n\n\n_target = {attribute}()\n"
    )


def _two_torches(entry: Entry, filename: str) -> str:
    """How to run an entry found across two torches: save under one, load under the other."""
    if entry.torches is None:
        return ""
    save, load = entry.torches
    return f"""

Found saving under torch {save} and loading under torch {load}: run the two halves, each
under its torch, on one folder (the save run leaves the saved state beside the checkpoint):
    /path/to/torch-{save.split("+")[0]}/bin/python {filename} --phase save --dir /tmp/repro
    /path/to/torch-{load.split("+")[0]}/bin/python {filename} --phase load --dir /tmp/repro
(`shardfuzz torch-env VERSION` makes such an environment and prints its Python.)"""


def _head(entry: Entry, filename: str) -> str:
    """The script's docstring (what was recorded, how to run it) and its imports."""
    case = entry.case
    versions = ", ".join(f"{k} {v}" for k, v in sorted(entry.versions.items())) or "unknown"
    known = (
        f"\nKnown bug: {entry.known.report or entry.known.description} (torch {entry.known.torch})"
        if entry.known
        else ""
    )
    title = entry.title.replace('"""', "'''")
    n = _world_size(entry)
    return f'''#!/usr/bin/env python3
"""Standalone reproducer exported by shardfuzz.

{title}

Recorded: {entry.status} ({entry.triage}); seen on {versions}.
Signature: {entry.signature}{known}

Needs only torch. Run either of:
    python {filename}                              # spawns {n} gloo rank(s) on CPU
    torchrun --nproc-per-node {n} {filename}
It prints REPRODUCED and exits 1 when the failure shows, "did not reproduce" and 0 otherwise.
Ranks 0..{case.save.world_size - 1} save (the save side), ranks 0..{case.load.world_size - 1} load (the load side).{_two_torches(entry, filename)}
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
from torch import nn

warnings.simplefilter("ignore", UserWarning)  # torch's FSDP chatter; delete this line to see it'''
