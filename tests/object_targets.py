"""Object-level targets for the tests: a framework-like checkpoint API, and the same with a bug.

They take the live model and optimizer as a training framework's ``save``/``load`` does, build
their state dicts with ``torch.distributed.checkpoint.state_dict`` from the side's description,
write and read them with DCP, and set the loaded state into the objects themselves.
"""

from __future__ import annotations

import attrs
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from shardfuzz.targets.support import TargetSupport


class DsdCheckpointer:
    """Save and load as a framework would: full or sharded as the side says, one DCP checkpoint."""

    def _options(self, side: dict) -> StateDictOptions:
        # rank-0-only loading is a framework's own protocol; this one loads the same dict everywhere
        extra = {k: v for k, v in side["options"].items() if k != "broadcast_from_rank0"}
        return StateDictOptions(
            full_state_dict=side["state_dict"] == "full",
            flatten_optimizer_state_dict=side["flatten_optimizer_state_dict"],
            **extra,
        )

    def save_objects(self, model, optim, *, side, checkpoint_id, process_group):
        model_sd, optim_sd = get_state_dict(model, optim, options=self._options(side))
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=checkpoint_id, process_group=process_group)

    def load_objects(self, model, optim, *, side, saved_by, checkpoint_id, process_group):
        options = self._options(side)
        model_sd, optim_sd = get_state_dict(model, optim, options=options)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=checkpoint_id, process_group=process_group)
        self.set(model, optim, state, options)

    def set(self, model, optim, state, options):
        set_state_dict(model, optim, model_state_dict=state["model"], optim_state_dict=state["optim"], options=options)


class ForgetsOptimizerOnLoad(DsdCheckpointer):
    """A framework bug: its load restores the model and leaves the optimizer as it was."""

    def set(self, model, optim, state, options):
        set_model_state_dict(model, state["model"], options=options)


class Fsdp2ShardedOnly(DsdCheckpointer):
    """A framework that takes FSDP2 sharded state dicts only, with DCP on the default group (so sides
    span the whole pool): what a declaration looks like, for the tests."""

    support = TargetSupport(
        engines=("FSDP2",),
        state_dicts=("sharded",),
        options=False,
        whole_pool=True,
        reasons={
            "engines": "this framework shards with fully_shard only",
            "state_dicts": "it writes sharded checkpoints only",
            "options": "it sets its own StateDictOptions",
            "whole_pool": "its DCP calls use the default process group",
        },
    )


class Fsdp2ShardedPerSide(Fsdp2ShardedOnly):
    """The same framework, its loads into another number of ranks a supported route: each side runs on a pool of
    its own size (``PerSidePools``), DCP on that pool's default group."""

    support = attrs.evolve(Fsdp2ShardedOnly.support, per_side_pools=True)
