"""DeepSpeed's own checkpointing: ``engine.save_checkpoint`` and ``engine.load_checkpoint`` on a ZeRO engine, with
the route DeepSpeed documents for a load into another layout.

Both sides are ``ZeRO`` engines (``deepspeed.initialize`` over the case's model and optimizer, shardfuzz's
``rank/portable/zero.py``). A load into the layout that saved (the same number of ranks and ZeRO stage, both
precisions alike) is a plain ``load_checkpoint``. Any other is DeepSpeed's universal checkpoint: rank 0 converts
the checkpoint with DeepSpeed's own ``ds_to_universal`` (once per checkpoint), and every rank loads it with
universal checkpointing on. The save passes the ``universal_checkpoint_info`` client state that the conversion
requires of ZeRO 1 and 2 checkpoints (an empty one: no tensor or pipeline parallelism to describe). A load into an
unsharded model is DeepSpeed's consolidation: ``zero_to_fp32``'s ``get_fp32_state_dict_from_zero_checkpoint`` gathers
the checkpoint's fp32 weights into one state dict, loaded with ``load_state_dict`` (strict), as its docs show; the
optimizer state stays behind (``Case.consolidates_zero``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import deepspeed  # noqa: F401  (the framework: a missing install shows as this target unavailable)
import torch.distributed as dist
from deepspeed.checkpoint.constants import UNIVERSAL_CHECKPOINT_INFO

from shardfuzz.targets.support import TargetSupport

__all__ = ["DeepSpeedCheckpoint", "TAG", "consolidate_into", "same_layout"]

TAG = "step1"  # the tag the checkpoint is saved under; its universal conversion is TAG + "_universal"


def same_layout(side: dict, saved_by: dict) -> bool:
    """Whether ``side`` loads the checkpoint ``saved_by`` wrote as it is: the same number of ranks, ZeRO 1 or 2 on
    both (their files are alike) or 3 on both, the same precision."""
    save, load = saved_by["engine"], side["engine"]
    return (
        side["world_size"] == saved_by["world_size"]
        and (save["stage"] == 3) == (load["stage"] == 3)
        and save["bf16"] == load["bf16"]
    )


def _universal(checkpoint_id: str, process_group) -> str:
    """The universal conversion of the checkpoint's ``TAG`` (made by the group's first rank once), its tag."""
    tag = f"{TAG}_universal"
    output = os.path.join(checkpoint_id, tag)
    if dist.get_rank(process_group) == 0 and not os.path.isdir(output):
        command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal"]
        command += ["--input_folder", os.path.join(checkpoint_id, TAG), "--output_folder", output]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "DS_ACCELERATOR": "cpu"})
        if done.returncode != 0:
            raise RuntimeError(f"ds_to_universal failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    dist.barrier(process_group)
    return tag


def consolidate_into(model, checkpoint_id: str) -> None:
    """DeepSpeed's ``zero_to_fp32`` route: the checkpoint's fp32 weights, gathered from every rank's files into one
    state dict, loaded into the unsharded ``model`` (strict: a key missing or left over fails the load)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    model.load_state_dict(get_fp32_state_dict_from_zero_checkpoint(checkpoint_id, tag=TAG))


class DeepSpeedCheckpoint:
    """``save_checkpoint`` and ``load_checkpoint`` of a DeepSpeed engine (ZeRO 1, 2, 3; float32 or bf16)."""

    framework = "deepspeed"
    support = TargetSupport(
        engines=("ZeRO",),
        load_engines=("Unsharded",),
        state_dicts=("sharded",),
        options=False,
        flatten=False,
        training_state=False,
        held_state_dicts=False,
        lenient_loads=False,
        whole_pool=True,
        per_side_pools=True,
        reasons={
            "whole_pool": "DeepSpeed's save_checkpoint and its ZeRO 3 set-up meet on the default process group "
            "(measured: a side of 2 ranks in a pool of 3 hangs there, with the side's ranks as its mpu); a load "
            "on another number of ranks (a universal checkpoint) runs on a pool of its own size",
            "engines": "DeepSpeed's checkpoint API takes the engine deepspeed.initialize built (a ZeRO side); a load "
            "side may also be an unsharded model, which DeepSpeed's zero_to_fp32 consolidation loads",
            "state_dicts": "DeepSpeed writes its own partitioned files; shardfuzz's state-dict type does not apply",
            "options": "DeepSpeed takes no StateDictOptions",
            "flatten": "DeepSpeed keeps the optimizer state as flat partitions of its own",
            "training_state": "the engine saves its own LR scheduler; the adapter hands it the model and optimizer",
            "held_state_dicts": "the engine takes its state dicts itself",
            "lenient_loads": "load_checkpoint's strictness is the framework's own",
        },
    )

    def save_objects(self, model, optim, *, side, checkpoint_id, process_group):
        model.save_checkpoint(checkpoint_id, tag=TAG, client_state={UNIVERSAL_CHECKPOINT_INFO: {}})
        dist.barrier(process_group)

    def load_objects(self, model, optim, *, side, saved_by, checkpoint_id, process_group):
        if side["engine"]["kind"] == "Unsharded":
            consolidate_into(model, checkpoint_id)
            dist.barrier(process_group)
            return
        tag = TAG
        if not same_layout(side, saved_by):
            tag = _universal(checkpoint_id, process_group)
            model._config.load_universal_checkpoint = True  # the config key "checkpoint": {"load_universal": true}
        path, _ = model.load_checkpoint(checkpoint_id, tag=tag)
        if path is None:
            raise RuntimeError(f"DeepSpeed's load_checkpoint found no checkpoint {tag!r} in {checkpoint_id}")
        dist.barrier(process_group)
