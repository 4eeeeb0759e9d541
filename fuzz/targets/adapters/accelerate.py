"""Hugging Face accelerate's FSDP checkpointing, called as ``Accelerator.save_state`` and
``Accelerator.load_state`` call it.

``save_state`` hands each prepared FSDP model to ``save_fsdp_model(fsdp_plugin, accelerator,
model, output_dir, i)`` and each optimizer to ``save_fsdp_optimizer(fsdp_plugin, accelerator,
optimizer, model, output_dir, i)``; ``load_state`` calls the matching loaders. This adapter calls
those same functions with a real ``FullyShardedDataParallelPlugin`` built for the side (FSDP1 or
FSDP2, FULL or SHARDED state dict, the plugin's own default state-dict configs: CPU offload on,
rank-0-only full state dicts on more than one process). What the functions read of the
``Accelerator`` (its process index and count, whether it is FSDP2, its barrier) comes from
``_AcceleratorView``, since building an ``Accelerator`` would also wrap the model its own way;
the wrapping under test is the case's.
"""

from __future__ import annotations

import torch.distributed as dist
from accelerate import PartialState
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import load_fsdp_model, load_fsdp_optimizer, save_fsdp_model, save_fsdp_optimizer
from accelerate.utils.other import is_compiled_module

from shardfuzz.targets.adapters import engine_kind, whole_group_rank
from shardfuzz.targets.support import TargetSupport

__all__ = ["AccelerateFsdpCheckpoint"]

_STATE_DICT_TYPES = {"full": "FULL_STATE_DICT", "sharded": "SHARDED_STATE_DICT"}


class _AcceleratorView:
    """The attributes of ``Accelerator`` that accelerate's FSDP checkpoint functions read."""

    def __init__(self, side: dict, process_group):
        self.process_index, self.num_processes = whole_group_rank(process_group)
        self.is_main_process = self.process_index == 0
        self.is_fsdp2 = engine_kind(side) == "FSDP2"
        self._group = process_group

    def wait_for_everyone(self) -> None:
        dist.barrier(self._group)


def _plugin(side: dict) -> FullyShardedDataParallelPlugin:
    # accelerate's logging refuses to run before its process state exists (an Accelerator makes one);
    # on a process group that is already up it only reads it.
    PartialState(cpu=side["device"] == "cpu")
    return FullyShardedDataParallelPlugin(
        fsdp_version=2 if engine_kind(side) == "FSDP2" else 1,
        state_dict_type=_STATE_DICT_TYPES[side["state_dict"]],
    )


class AccelerateFsdpCheckpoint:
    """``save_fsdp_model``/``save_fsdp_optimizer`` and their loaders, model index 0, DCP for sharded."""

    framework = "accelerate"
    support = TargetSupport(
        engines=("FSDP1", "FSDP2"),
        state_dicts=("full", "sharded"),
        same_state_dict=True,
        options=False,
        flatten=False,
        whole_pool=True,
        training_state=False,
        held_state_dicts=False,
        lenient_loads=False,
        reasons={
            "lenient_loads": "the framework's load decides its own strictness",
            "held_state_dicts": "accelerate's save_state and load_state take the prepared model and optimizer and build their state dicts themselves",
            "training_state": "accelerate's save_state takes the scheduler objects it prepared; the adapter hands it the model and optimizer only",
            "engines": "accelerate's FSDP checkpoint functions take FSDP1 and FSDP2 models; DDP and "
            "single-process models are saved by save_state's plain torch.save path",
            "state_dicts": "LOCAL_STATE_DICT files are per-rank torch.save files that only the same "
            "ranks can load; shardfuzz draws FULL and SHARDED",
            "same_state_dict": "the plugin's one state_dict_type decides the files written and read "
            "(FULL: one pytorch_model_fsdp.bin; SHARDED: a DCP folder)",
            "options": "the plugin sets the StateDictOptions itself (offload_to_cpu, rank0_only)",
            "flatten": "accelerate passes no flatten_optimizer_state_dict (torch's default)",
            "whole_pool": "accelerate's dist_cp.save/load, broadcasts and rank-0 file writes use the "
            "default process group",
        },
    )

    def save_objects(self, model, optim, *, side, checkpoint_id, process_group):
        plugin, accelerator, model = _plugin(side), _AcceleratorView(side, process_group), _as_held(model, side)
        save_fsdp_model(plugin, accelerator, model, checkpoint_id)
        save_fsdp_optimizer(plugin, accelerator, optim, model, checkpoint_id)

    def load_objects(self, model, optim, *, side, saved_by, checkpoint_id, process_group):
        plugin, accelerator, model = _plugin(side), _AcceleratorView(side, process_group), _as_held(model, side)
        load_fsdp_model(plugin, accelerator, model, checkpoint_id)
        load_fsdp_optimizer(plugin, accelerator, optim, model, checkpoint_id)


def _as_held(model, side: dict):
    """The model as ``Accelerator`` holds it for ``save_state``/``load_state``: when accelerate compiles an FSDP1
    model it keeps the FSDP module under torch.compile's wrapper (accelerator.py, prepare_model); an FSDP2 model it
    keeps compiled (torch's state-dict helpers drop the ``_orig_mod.`` prefix). Passed the wrapper, accelerate's FSDP1
    path saves ``_orig_mod.``-prefixed keys and takes the model for an unwrapped one."""
    return model._orig_mod if engine_kind(side) == "FSDP1" and is_compiled_module(model) else model
