"""torchtitan's ``CheckpointManager``, with its model-part wrapper and optimizer container.

The trainer builds ``CheckpointManager(config, dataloader=..., model_parts=[...], optimizers=
OptimizersContainer, lr_schedulers=..., states=..., sd_adapter=None, base_folder=...)`` and calls
``save(curr_step)`` every ``interval`` steps and ``load(step)`` on resume. This adapter does the same
with the case's (FSDP2-sharded) model as the one model part and the case's optimizer inside a real
``OptimizersContainer`` (its flat, FQN-keyed state dict and its ``init_optim_state``). torchtitan
builds its optimizers from named parameters; the case's optimizer is given the same
``param_names`` for the duration of the call (and has them taken off again, so the objects the
oracles judge are as shardfuzz built them). The data loader and LR schedulers the trainer would
pass are empty ``Stateful`` stand-ins: this adapter puts the model and optimizer path under test.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist
from torchtitan.components.checkpoint import CheckpointManager
from torchtitan.components.optimizer import OptimizersContainer

from shardfuzz.targets.support import TargetSupport

__all__ = ["TitanCheckpointManager"]

STEP = 1  # the step the checkpoint is saved as and loaded from


class _Empty:
    """A ``Stateful`` with nothing in it (the data loader's and schedulers' places)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass


def _container(model, optim) -> OptimizersContainer:
    """An ``OptimizersContainer`` holding the case's optimizer, as torchtitan's own ``__init__`` leaves
    one (its optimizers, its model parts, ``Optimizer.__init__`` over every parameter)."""
    container = OptimizersContainer.__new__(OptimizersContainer)
    container.optimizers = [optim]
    container.model_parts = [model]
    container._post_init([p for group in optim.param_groups for p in group["params"]])
    return container


@contextlib.contextmanager
def _named(model, optim):
    """The optimizer's param groups carry ``param_names``, as when torchtitan builds it, for a while
    (a load replaces the groups with the checkpoint's, names and all: those go too)."""
    names = {id(p): name for name, p in model.named_parameters()}
    already = all("param_names" in group for group in optim.param_groups)
    for group in optim.param_groups:
        group.setdefault("param_names", [names[id(p)] for p in group["params"]])
    try:
        yield
    finally:
        if not already:
            for group in optim.param_groups:
                group.pop("param_names", None)


def _manager(model, optim, checkpoint_id: str) -> CheckpointManager:
    config = CheckpointManager.Config(enable=True, folder="checkpoint", interval=1, keep_latest_k=0)
    return CheckpointManager(
        config,
        dataloader=_Empty(),
        model_parts=[model],
        optimizers=_container(model, optim),
        lr_schedulers=_Empty(),
        states={},
        sd_adapter=None,
        base_folder=os.fspath(checkpoint_id),
    )


class TitanCheckpointManager:
    """``CheckpointManager.save(step)`` and ``load(step)`` over one FSDP2 model part."""

    framework = "torchtitan"
    support = TargetSupport(
        engines=("FSDP2",),
        state_dicts=("sharded",),
        options=False,
        flatten=False,
        whole_pool=True,
        min_steps=1,
        training_state=False,
        held_state_dicts=False,
        lenient_loads=False,
        reasons={
            "lenient_loads": "the framework's load decides its own strictness",
            "held_state_dicts": "torchtitan's CheckpointManager holds its own ModelWrapper (a cached model state dict); the adapter hands it the model",
            "training_state": "torchtitan's CheckpointManager saves its own lr_schedulers and dataloader states; the adapter hands it the model and optimizer only",
            "engines": "torchtitan shards with fully_shard (FSDP2) and saves each model part's own "
            "state_dict(); FSDP1 and DDP models are not what its trainer builds",
            "state_dicts": "the model parts' state_dict() and the container's flat optimizer state "
            "are DTensor-sharded; torchtitan writes no full state dict except an HF export",
            "options": "torchtitan passes no StateDictOptions",
            "flatten": "OptimizersContainer flattens the optimizer state itself (state.<fqn>.<name>)",
            "whole_pool": "CheckpointManager saves and loads with DCP on the default process group",
            "min_steps": "OptimizersContainer materialises missing optimizer state with a zero-lr "
            "step before saving, which advances the step counters of an untrained optimizer",
        },
    )

    def save_objects(self, model, optim, *, side, checkpoint_id, process_group):
        with _named(model, optim):
            manager = _manager(model, optim, checkpoint_id)
            try:
                manager.save(curr_step=STEP)
                manager.maybe_wait_for_saving()
            finally:
                manager.close()

    def load_objects(self, model, optim, *, side, saved_by, checkpoint_id, process_group):
        with _named(model, optim), torch.no_grad():
            manager = _manager(model, optim, checkpoint_id)
            try:
                if not manager.load(step=STEP):
                    raise RuntimeError(f"torchtitan's CheckpointManager found no checkpoint at step {STEP}")
            finally:
                manager.close()
        dist.barrier(process_group)
