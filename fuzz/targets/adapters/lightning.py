"""Lightning Fabric's ``save``/``load`` through its FSDP strategy (FSDP1) and its model-parallel
strategy (FSDP2).

``Fabric.save(path, state)`` unwraps the objects in ``state`` and calls its strategy's
``save_checkpoint(path, state)``; ``Fabric.load(path, state)`` calls ``load_checkpoint`` and
Fabric itself only unwraps. This adapter builds the strategy Fabric would hold for the side
(``FSDPStrategy(state_dict_type=...)`` for FSDP1, ``ModelParallelStrategy(save_distributed_
checkpoint=...)`` for FSDP2), with Lightning's own ``LightningEnvironment`` set to the pool's rank
and world size instead of Fabric's launcher (the pool's ranks are already a process group), and
calls those two methods with the state as Fabric expects it: ``{"model": model, "optimizer":
optim}``. The load side reads whatever the checkpoint is (a file: full; a folder: sharded), as
Fabric does, whichever strategy saved it.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.fabric.strategies import FSDPStrategy, ModelParallelStrategy

from shardfuzz.targets.adapters import engine_kind, whole_group_rank
from shardfuzz.targets.support import TargetSupport

__all__ = ["FabricCheckpoint"]


def _strategy(side: dict, process_group):
    rank, world_size = whole_group_rank(process_group)
    environment = LightningEnvironment()
    environment.set_world_size(world_size)
    environment.set_global_rank(rank)
    strategy: FSDPStrategy | ModelParallelStrategy
    if engine_kind(side) == "FSDP1":
        strategy = FSDPStrategy(
            state_dict_type=side["state_dict"],
            parallel_devices=[torch.device(side["device"])] * world_size,
            cluster_environment=environment,
        )
    else:
        strategy = ModelParallelStrategy(
            parallelize_fn=lambda module, mesh: module,  # the case's fully_shard wrapping is done already
            save_distributed_checkpoint=side["state_dict"] == "sharded",
        )
        strategy.parallel_devices = [torch.device(side["device"])] * world_size
        strategy.cluster_environment = environment
    return strategy


def _path(checkpoint_id: str) -> str:
    return os.path.join(checkpoint_id, "fabric.ckpt")  # full: a file; sharded: a folder of that name


class FabricCheckpoint:
    """``strategy.save_checkpoint``/``load_checkpoint`` with ``{"model": ..., "optimizer": ...}``."""

    framework = "lightning"
    support = TargetSupport(
        engines=("FSDP1", "FSDP2"),
        state_dicts=("full", "sharded"),
        options=False,
        flatten=False,
        whole_pool=True,
        training_state=False,
        held_state_dicts=False,
        lenient_loads=False,
        reasons={
            "lenient_loads": "the framework's load decides its own strictness",
            "held_state_dicts": "Fabric's save and load take the module and optimizer and build their state dicts themselves",
            "training_state": "Lightning saves the LightningModule's own schedulers and loops; the adapter hands it the model and optimizer only",
            "engines": "Fabric's FSDPStrategy saves FSDP1 models and its ModelParallelStrategy DTensor "
            "(FSDP2) models; DDP checkpoints go through plain torch.save",
            "state_dicts": "Fabric's strategies write full or sharded checkpoints only",
            "options": "the strategies set their own StateDictOptions (cpu_offload on for FSDP2; "
            "rank-0-only, CPU-offloaded full state dicts for FSDP1)",
            "flatten": "Fabric passes no flatten_optimizer_state_dict (torch's default)",
            "whole_pool": "Fabric broadcasts the path and saves with DCP on the default process group",
        },
    )

    def save_objects(self, model, optim, *, side, checkpoint_id, process_group):
        # A sharded save makes its folder's parents; a full one torch.saves into the folder as it finds it.
        os.makedirs(checkpoint_id, exist_ok=True)
        _strategy(side, process_group).save_checkpoint(_path(checkpoint_id), {"model": model, "optimizer": optim})
        dist.barrier(process_group)  # Fabric.save's own barrier after the strategy's save

    def load_objects(self, model, optim, *, side, saved_by, checkpoint_id, process_group):
        _strategy(side, process_group).load_checkpoint(_path(checkpoint_id), {"model": model, "optimizer": optim})
        dist.barrier(process_group)  # and Fabric.load's
