"""One side's steps on the pool's ranks: build it, train it, get and set its state dicts, load into it.

``roundtrip`` sequences these for a case's save and load sides, and ``resume`` for its second
round-trip; the torch calls themselves are in ``rank.portable`` (shared with exported scripts).
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist

from shardfuzz.case import Case, Dcp, Side, UserModel, ZeRO
from shardfuzz.rank import model_factory
from shardfuzz.rank.build import build_app_state, build_module, build_optimizer, engine_fields, shard
from shardfuzz.rank.checkpoint_io import storage_target
from shardfuzz.rank.context import RankContext
from shardfuzz.rank.portable import sharding, zero
from shardfuzz.rank.portable import steps as rank_steps
from shardfuzz.rank.portable.sharding import rank_device
from shardfuzz.targets import CheckpointTarget, DcpTarget, LoadsPartially, ObjectTarget, ShardsModules

__all__ = [
    "CONTINUE_STEPS",
    "SAVE_FAILED_WAIT",
    "agree_whether_a_save_failed",
    "any_rank",
    "build_side",
    "checkpoint_io",
    "held_model_state",
    "load_into",
    "options_extra",
    "save_from",
    "save_state",
    "side_description",
    "train",
]

CONTINUE_STEPS = 2  # steps the continuation oracle takes after the save and after the load

#: Seconds a save-side rank that raised waits for every rank to hear of it (all do, unless a rank of its side is
#: stuck in a collective the failure left behind: then the pool's deadline and restart deal with that rank).
SAVE_FAILED_WAIT = 1.0


def agree_whether_a_save_failed(*, failed: bool, wait: float | None = None) -> bool:
    """The world's barrier between a save and its load, which also tells every rank whether a save rank raised.

    A plain barrier would leave the ranks outside a failed save side (and those of it that did not raise)
    waiting for the ones that raised until the case's deadline, and the pool would restart every rank: seconds
    per failure, against a fraction of one for a process-group reset. ``wait``: give up after this many
    seconds (a rank that raised must report, whatever the others do)."""
    flag = torch.tensor([int(failed)])
    work = dist.all_reduce(flag, async_op=True)
    if wait is None:
        work.wait()
        return bool(flag.item())
    deadline = time.monotonic() + wait
    while not work.is_completed() and time.monotonic() < deadline:
        time.sleep(0.002)
    return True


def side_description(case: Case, side: Side) -> dict[str, Any]:
    """``side`` as plain data, for an ``ObjectTarget`` (and as a literal in exported scripts)."""
    return {
        "engine": engine_fields(side.engine),
        "mesh_shape": tuple(side.mesh_shape),
        "world_size": side.world_size,
        "state_dict": side.state_dict,
        "state_dict_api": side.state_dict_api,
        "options": options_extra(case, side),
        "flatten_optimizer_state_dict": case.flatten_optimizer_state_dict,
        "device": side.device,
    }


def checkpoint_io(case: Case, target: CheckpointTarget | ObjectTarget) -> CheckpointTarget | ObjectTarget:
    """What writes and reads the checkpoint: the case's storage variant for the default
    target itself (not a subclass: a mutant or a user's target does its own I/O, so only
    the default storage fits it), else the target."""
    if type(target) is DcpTarget:
        return storage_target(case.storage)
    if case.storage != Dcp():
        raise ValueError(
            f"case.storage {case.storage!r} needs the default target; {type(target).__name__} "
            "does its own I/O (draw with cases(vary_storage=False))"
        )
    return target


def build_side(case: Case, side: Side, spec, ctx: RankContext, target, *, seed: int):
    """``spec`` built on ``side`` from ``seed``: the model, its optimizer and the training state beside them."""
    n = side.world_size
    module = build_module(spec, seed=seed, device=side.device, meta=side.meta_init)
    # FSDP2 shards on a mesh, as does FSDP1 for HSDP; the others take the group itself.
    mesh = ctx.mesh(side.mesh_shape, side.device) if side.engine.needs_mesh else None
    if isinstance(target, ShardsModules):

        def sharded(module):
            return target.shard(module, side, group=ctx.group(n), mesh=mesh, default=shard)
    else:

        def sharded(module):
            return shard(module, side, group=ctx.group(n), mesh=mesh)

    model = sharding.wrap_and_shard(
        module, side.wrappers, sharded, engine=type(side.engine).__name__, device=side.device, seed=seed
    )
    # The load side (seed + 1) also gets other hyperparameters, so a loader that
    # drops param groups is seen (non-vacuity).
    optim = build_optimizer(
        case.optimizer,
        model,
        param_groups=case.param_groups,
        perturbed=seed != case.seed,
        empty_group=case.loop.empty_group,
        late_group=case.loop.late_group,
    )
    if isinstance(side.engine, ZeRO):  # DeepSpeed's engine over the model and the case's optimizer
        model, optim = zero.initialize(
            model,
            optim,
            stage=side.engine.stage,
            bf16=side.engine.bf16,
            elastic=side.engine.elastic,
            batch_size=case.batch_size,
            group=ctx.group(n),
            single_group=ctx.single_group(),
        )
    return model, optim, build_app_state(case, side, optim, group=ctx.group(n))


def train(
    case: Case, side: Side, model, optim, app=None, *, rank: int, continuation: bool = False, first: int | None = None
) -> None:
    """``case.steps`` optimizer steps on data seeded by (seed, step, rank), drawn on the CPU.

    ``continuation``: the ``CONTINUE_STEPS`` steps after those, with the same batch
    on every rank, so the averaged gradient is the same whatever the number of ranks.
    ``first``: ``case.steps`` steps (at least one) from step ``first`` on (a resumed side's).
    A model with a BatchNorm gets the same batch on every rank throughout: its running
    statistics are buffers no engine keeps in step across ranks, and DCP saves one
    rank's copy of a replicated tensor (whichever it picks), so with per-rank data the
    checkpoint would legitimately hold another rank's statistics than rank 0's.
    """
    if first is not None:
        count = max(case.steps, 1)
    else:
        first, count = (case.steps, CONTINUE_STEPS) if continuation else (0, case.steps)
    rank_steps.train_steps(
        model,
        optim,
        seed=case.seed,
        first=first,
        count=count,
        rank=sharding.data_rank(engine_fields(side.engine), side.mesh_shape, rank),
        same_batch=continuation or case.model.has_batch_norm,
        batch_size=case.batch_size,
        input_width=case.model.input_width,
        num_embeddings=case.model.num_embeddings,
        dtype=case.model.dtype,
        device=side.device,
        app=app,
        make_batch=model_factory.batch_maker(case.model.factory) if isinstance(case.model, UserModel) else None,
        gradless=case.loop.gradless,
    )


def options_extra(case: Case, side: Side) -> dict[str, bool]:
    """The side's ``StateDictOptions`` fields beyond the state-dict type and flattening: only those set,
    as an older torch may lack one the case never sets. A lenient load side sets ``strict=False``."""
    extra = {name: True for name in ("cpu_offload", "broadcast_from_rank0") if getattr(side, name)}
    if case.ignore_frozen_params:
        extra.update(ignore_frozen_params=True, strict=False)
    if case.loop.lenient and side is case.load:
        extra.update(strict=False)
    return extra


def _options(case: Case, side: Side):
    return rank_steps.state_dict_options(
        full=side.state_dict == "full", flatten=case.flatten_optimizer_state_dict, extra=options_extra(case, side)
    )


def held_model_state(case: Case, side: Side, model, *, held: bool):
    """The model state dict ``side`` holds from build (``Loop.save_held``/``load_held``), or None."""
    return rank_steps.model_state(model, kind=side.state_dict, options=_options(case, side)) if held else None


def _model_state(case: Case, side: Side, model, held=None):
    """The side's model state dict alone: the one it holds, or one taken now."""
    return (
        held if held is not None else rank_steps.model_state(model, kind=side.state_dict, options=_options(case, side))
    )


def save_state(case: Case, side: Side, model, optim, app=None, *, held=None) -> dict[str, Any]:
    """The state dict ``side`` hands its checkpoint target (the model's, ``held`` where it holds one)."""
    return rank_steps.get_side_state(
        model,
        optim,
        kind=side.state_dict,
        api=side.state_dict_api,
        options=_options(case, side),
        app=app,
        held_model=held,
    )


def save_from(case: Case, side: Side, model, optim, app, target, checkpoint_dir, *, process_group, held=None) -> None:
    """``side``'s state (its ``held`` model state dict, where it holds one) written through the target; or, for an
    ``ObjectTarget``, the target's own save of the objects."""
    if isinstance(target, ObjectTarget):  # the target builds its state dicts from the objects itself
        description = side_description(case, side)
        target.save_objects(model, optim, side=description, checkpoint_id=checkpoint_dir, process_group=process_group)
        return
    if case.storage.model_only:  # a format of tensors alone: the model's state dict
        state = {"model": _model_state(case, side, model, held)}
    else:
        state = save_state(case, side, model, optim, app, held=held)
    target.save(state, checkpoint_id=checkpoint_dir, process_group=process_group)


def load_into(
    case: Case,
    side: Side,
    model,
    optim,
    ctx: RankContext,
    target,
    checkpoint_dir,
    app=None,
    *,
    held=None,
    saved_by: Side | None = None,
):
    """The side's state dict as the template (``held``, where it holds one), filled from the checkpoint, set into
    the model; or, for an ``ObjectTarget``, the target's own load into the objects (``saved_by``: the side that
    wrote the checkpoint, the save side unless given). A lenient load leaves the keys the checkpoint lacks as they
    are (the target's ``load_partial``)."""
    if isinstance(target, ObjectTarget):
        target.load_objects(
            model,
            optim,
            side=side_description(case, side),
            saved_by=side_description(case, saved_by or case.save),
            checkpoint_id=checkpoint_dir,
            process_group=ctx.group(side.world_size),
        )
        return
    group = ctx.group(side.world_size)
    lenient = case.loop.lenient and side is case.load
    if lenient and not isinstance(target, LoadsPartially):
        raise TypeError(f"a lenient load needs the target's load_partial; {type(target).__name__} has none")
    if case.loads_model_only and side is case.load:  # the model alone; the optimizer stays as built
        state = {"model": _model_state(case, side, model, held)}
    else:
        state = save_state(case, side, model, optim, app, held=held)
    if lenient:
        target.load_partial(state, checkpoint_id=checkpoint_dir, process_group=group)
    else:
        target.load(state, checkpoint_id=checkpoint_dir, process_group=group)
    rank_steps.set_side_state(
        model,
        optim,
        state,
        kind=side.state_dict,
        api=side.state_dict_api,
        options=_options(case, side),
        rank=ctx.rank,
    )


def any_rank(flag: bool, group, device: str) -> bool:
    """Whether ``flag`` is set on any rank of ``group`` (collective on it)."""
    votes = torch.tensor([int(flag)], device=rank_device(device))
    dist.all_reduce(votes, group=group)
    return bool(votes.item())
