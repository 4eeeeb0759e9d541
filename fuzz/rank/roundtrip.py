"""One rank's part of one case: build, train, save, rebuild on the load side, load, judge.

Every rank of the pool calls ``run_case`` with the same Case. Ranks ``0..n-1``
form the save side's group (n = ``case.save.world_size``); ranks ``0..m-1`` the
load side's. Ranks outside a side skip it; one world barrier between save and
load is the only synchronisation the fuzzer adds (the load must see a finished
checkpoint). Rank 0 belongs to both sides, so it holds the gathered saved and
loaded state and runs the oracles.

A case may also run as two runs (``phase`` "save", then "load"), on two pools that
may run two torches: the save run's rank 0 then hands the saved state to the load
run's through a file beside the checkpoint (``shardfuzz.rank.portable.handoff``).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import attrs
import torch
import torch.distributed as dist

from shardfuzz.case import FSDP2, TP, Case, Dcp, Side, UserModel
from shardfuzz.rank import model_factory, oracles, sharded_checks
from shardfuzz.rank.build import build_app_state, build_module, build_optimizer, engine_fields, shard
from shardfuzz.rank.checkpoint_io import storage_target
from shardfuzz.rank.oracles import compare_state
from shardfuzz.rank.portable import sharding
from shardfuzz.rank.portable import steps as rank_steps
from shardfuzz.rank.portable.handoff import one_torch_hyperparameters, read_handoff, write_handoff
from shardfuzz.rank.portable.sharding import device_mesh, rank_device
from shardfuzz.rank.portable.steps import gather_full
from shardfuzz.targets import CheckpointTarget, DcpTarget, FinishesSave, ObjectTarget, ShardsModules
from shardfuzz.verdict import Mismatch

__all__ = ["PHASES", "RankContext", "run_case"]

#: ``run_case``'s phases: the whole case, or its save or load half (run by two pools, in that order).
PHASES = ("both", "save", "load")


_GENERATIONS = itertools.count()  # process groups this rank process has joined


class RankContext:
    """This rank's place in the world, its cached prefix groups and meshes, and the phase it is in."""

    def __init__(self, rank: int, world_size: int, on_phase=None):
        self.generation = next(_GENERATIONS)  # the same on every rank: each makes its contexts in step
        self.rank = rank
        self.world_size = world_size
        self.on_phase = on_phase  # called with each phase name (the pool shows it for a crashed rank)
        self.phase = "idle"
        self._since = 0.0  # when the phase began (perf_counter)
        self.timings: dict[str, float] = {}
        self.unchanged: list[str] = []  # non-vacuity: keys equal to the saved state before the load
        self._groups: dict[int, Any] = {}
        self._async_groups: dict[int, Any] = {}  # n -> a second group on ranks 0..n-1 for async_save
        self._meshes: dict[tuple, Any] = {}  # (mesh shape, device) -> DeviceMesh

    def create_groups(self) -> None:
        """Every prefix group ``[0..n-1]``; collective on the world, so all ranks call it once."""
        for n in range(1, self.world_size):
            self._groups[n] = dist.new_group(list(range(n)))
        self._groups[self.world_size] = dist.group.WORLD

    def group(self, n: int):
        return self._groups[n]

    def prepare_meshes(self, case: Case) -> None:
        """Make the case's 2-D meshes now: their groups are collective on the whole world,
        so every rank (on a side or not) makes them here, in the same order. Cached."""
        for side in (case.save, case.load):
            key = (side.mesh_shape, side.device)
            if len(side.mesh_shape) == 2 and key not in self._meshes:
                self._meshes[key] = device_mesh(
                    side.mesh_shape,
                    self._groups[side.world_size],
                    rank=self.rank,
                    generation=self.generation,
                    device=side.device,
                )

    def prepare_async_group(self, case: Case) -> None:
        """An async save writes (and runs its collectives) in a thread while the save side trains on:
        it gets a group of its own, as torch recommends. Collective on the world, like the meshes."""
        n = case.save.world_size
        if case.saves_async and n not in self._async_groups:
            self._async_groups[n] = dist.new_group(list(range(n)))

    def checkpoint_group(self, case: Case):
        """The group the save side's checkpoint writer uses (after ``prepare_async_group``)."""
        n = case.save.world_size
        return self._async_groups[n] if case.saves_async else self.group(n)

    def mesh(self, shape: tuple[int, ...], device: str = "cpu"):
        """The DeviceMesh of a side of this shape on ``device`` (2-D ones come from ``prepare_meshes``)."""
        if (shape, device) not in self._meshes:
            self._meshes[shape, device] = device_mesh(
                shape, self._groups[shape[0]], rank=self.rank, generation=self.generation, device=device
            )
        return self._meshes[shape, device]

    def enter(self, phase: str) -> None:
        now = time.perf_counter()
        if self.phase != "idle":
            self.timings[self.phase] = self.timings.get(self.phase, 0.0) + now - self._since
        self.phase, self._since = phase, now
        if self.on_phase is not None:
            self.on_phase(phase)


CONTINUE_STEPS = 2  # steps the continuation oracle takes after the save and after the load


def run_case(
    case: Case,
    ctx: RankContext,
    target: CheckpointTarget | ObjectTarget,
    checkpoint_dir: str,
    phase: str = "both",
) -> list[Mismatch]:
    """Run this rank's share of ``case`` (of its ``phase``); return the oracles' mismatches (rank 0 holds most)."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    ctx.timings = {}
    ctx.unchanged = []
    expected = expected_after = None
    saved_by = None  # the torch that saved, when another run did
    mismatches: list[Mismatch] = []
    ctx.prepare_meshes(case)
    ctx.prepare_async_group(case)
    target = checkpoint_io(case, target)
    if phase != "load" and ctx.rank < case.save.world_size:
        try:
            expected, expected_after, mismatches = _save_side(case, ctx, target, checkpoint_dir, phase)
        except BaseException:
            if phase == "both":  # the ranks waiting to load would otherwise wait for this one until the deadline
                _agree_whether_a_save_failed(failed=True, wait=SAVE_FAILED_WAIT)
            raise
    if phase == "both":
        ctx.enter("barrier")
        if _agree_whether_a_save_failed(failed=False):
            ctx.enter("idle")
            return mismatches  # nothing to load: the save ranks that raised report why
    if phase != "save" and ctx.rank < case.load.world_size:
        if case.load_mutation is not None:
            mismatches += _load_incompatible(case, ctx, target, checkpoint_dir)
        else:
            if phase == "load" and ctx.rank == 0:
                ctx.enter("take-over")
                saved_by, expected, expected_after = read_handoff(checkpoint_dir)
            mismatches += _load_and_judge(
                case, ctx, target, checkpoint_dir, expected, expected_after, saved_by=saved_by
            )
    ctx.enter("idle")
    return mismatches


#: Seconds a save-side rank that raised waits for every rank to hear of it (all do, unless a rank of its side is
#: stuck in a collective the failure left behind: then the pool's deadline and restart deal with that rank).
SAVE_FAILED_WAIT = 1.0


def _save_side(case: Case, ctx: RankContext, target, checkpoint_dir: str, phase: str):
    """This rank's share of the save side: build, train, save (and what the checks run after it); the state
    gathered before the save and after the continuation, and the mismatches the save side's checks found."""
    mismatches: list[Mismatch] = []
    expected_after = None
    ctx.enter("build-save")
    model, optim, app = _build_side(case, case.save, case.model, ctx, target, seed=case.seed)
    ctx.enter("train")
    _train(case, case.save, model, optim, app, rank=ctx.rank)
    ctx.enter("gather-saved")
    expected = gather_full(model, optim, app)
    ctx.enter("save")
    if isinstance(target, ObjectTarget):  # the target builds its state dicts from the objects itself
        target.save_objects(
            model,
            optim,
            side=side_description(case, case.save),
            checkpoint_id=checkpoint_dir,
            process_group=ctx.checkpoint_group(case),
        )
    else:
        state = _side_state_dict(case, case.save, model, optim, app)
        target.save(state, checkpoint_id=checkpoint_dir, process_group=ctx.checkpoint_group(case))
        del state
    if "continuation" in case.checks and case.load_mutation is None:
        ctx.enter("continue-saved")
        _train(case, case.save, model, optim, app, rank=ctx.rank, continuation=True)
        expected_after = gather_full(model, optim, app)
    if "api-parity" in case.checks:
        ctx.enter("api-parity")
        mismatches += sharded_checks.api_parity(
            case.save, model, optim, rank=ctx.rank, group=ctx.group(case.save.world_size)
        )
    if isinstance(target, FinishesSave):
        ctx.enter("finish-save")  # an async write has run alongside the phases above
        target.finish_save()
    del model, optim, app
    if phase == "save" and ctx.rank == 0:
        ctx.enter("hand-off")
        write_handoff(checkpoint_dir, expected, expected_after)
    return expected, expected_after, mismatches


def _agree_whether_a_save_failed(*, failed: bool, wait: float | None = None) -> bool:
    """The world's barrier between save and load, which also tells every rank whether a save rank raised.

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


def _load_and_judge(case, ctx, target, checkpoint_dir, expected, expected_after, *, saved_by=None) -> list[Mismatch]:
    """Load into the rebuilt load side and judge it. ``saved_by``: the torch of a save run in another
    interpreter; where it differs from this one, continuation compares within its tolerance (another
    torch's kernels may round differently) even on an identical layout."""
    side = case.load
    mismatches: list[Mismatch] = []
    ctx.enter("build-load")
    model, optim, app = _build_side(case, side, case.model, ctx, target, seed=case.seed + 1)
    ctx.enter("gather-before-load")
    before = gather_full(model, optim, app)
    ctx.enter("load")
    refused = None
    try:
        _load_into(case, side, model, optim, ctx, target, checkpoint_dir, app)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        if not case.local_may_refuse:
            raise
        refused = exc
    if case.local_may_refuse and _any_rank(refused is not None, ctx.group(side.world_size), side.device):
        return []  # refused loudly (on at least one rank): the outcome allowed there
    ctx.enter("gather-loaded")
    actual = gather_full(model, optim, app)
    replicas: list[Mismatch] = []
    if side.world_size > 1:
        ctx.enter("replicas")
        replicas = sharded_checks.replica_consistency(model, optim, group=ctx.group(side.world_size), rank=ctx.rank)
    if isinstance(side.engine, (FSDP2, TP)):
        ctx.enter("layout")
        mismatches += sharded_checks.layout(model, case.model, side, rank=ctx.rank)
    if "full-offload" in case.checks:
        ctx.enter("full-offload")
        mismatches += sharded_checks.full_offload(model, optim, actual, rank=ctx.rank)
    if "continuation" in case.checks:
        ctx.enter("continue-loaded")
        _train(case, side, model, optim, app, rank=ctx.rank, continuation=True)
        actual_after = gather_full(model, optim, app)
    across = saved_by not in (None, str(torch.__version__))
    if ctx.rank == 0 and across:  # hyperparameters one torch has and the other cannot hold: not the checkpoint's
        one_torch = one_torch_hyperparameters(expected, actual)
        expected, actual = _without(expected, one_torch), _without(actual, one_torch)
        if "continuation" in case.checks:
            expected_after, actual_after = _without(expected_after, one_torch), _without(actual_after, one_torch)
    if ctx.rank == 0:
        ctx.enter("compare")
        mismatches += compare_state(
            oracles.expected_after_load(expected, before, case.kept_by_load()), actual, rank=0, before=before
        )
        mismatches += replicas  # after complete-state: a wrong loaded value is the worse news
        ctx.unchanged = oracles.unchanged_before_load(expected, before)
        if "continuation" in case.checks and not mismatches:
            drifted = oracles.continuation(
                expected_after,
                actual_after,
                rank=0,
                identical_layout=case.same_sharding,
                dtype=case.compute_dtype,
                adaptive_lr=_adaptive_lr(case),
                steps=CONTINUE_STEPS,
                across_torches=across,
                noise_step=case.optimizer.noise_step if case.optimizer.adaptive else 0.0,
            )
            note = f" (within tolerance: continued under torch {torch.__version__}, saved under {saved_by})"
            mismatches += [attrs.evolve(m, detail=m.detail + note) for m in drifted] if across else drifted
    return mismatches


def _without(state: dict, keys: set[str]) -> dict:
    return {k: v for k, v in state.items() if k not in keys}


def _adaptive_lr(case: Case) -> float | None:
    """The largest step rounding noise can make an optimizer that scales steps by the gradient's own size
    take (``noise_step`` learning rates; None for SGD), across layouts as across torches: RMSprop moved a
    bias before a BatchNorm by 0.077 at lr 0.01 between FSDP2 on one rank and DDP on three (campaign of
    2026-11-30), as it did between two torches."""
    if not case.optimizer.adaptive:
        return None
    return case.optimizer.lr * case.optimizer.noise_step


def _load_incompatible(case, ctx, target, checkpoint_dir) -> list[Mismatch]:
    """Load into the mutated model; the oracle wants an exception on every load rank."""
    side = case.load
    ctx.enter("build-load")
    model, optim, app = _build_side(case, side, case.load_model(), ctx, target, seed=case.seed + 1)
    ctx.enter("load-incompatible")
    raised = None
    try:
        _load_into(case, side, model, optim, ctx, target, checkpoint_dir, app)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raised = f"{type(exc).__name__}: {exc}"
    return oracles.loud_incompatible_load(case.load_mutation, raised, rank=ctx.rank)


def _load_into(case: Case, side: Side, model, optim, ctx: RankContext, target, checkpoint_dir, app=None) -> None:
    """The side's state dict as the template, filled from the checkpoint, set into the model; or, for an
    ``ObjectTarget``, the target's own load into the objects."""
    if isinstance(target, ObjectTarget):
        target.load_objects(
            model,
            optim,
            side=side_description(case, side),
            saved_by=side_description(case, case.save),
            checkpoint_id=checkpoint_dir,
            process_group=ctx.group(side.world_size),
        )
        return
    state = _side_state_dict(case, side, model, optim, app)
    target.load(state, checkpoint_id=checkpoint_dir, process_group=ctx.group(side.world_size))
    _set_side_state_dict(case, side, model, optim, state, rank=ctx.rank)


def _build_side(case: Case, side: Side, spec, ctx: RankContext, target, *, seed: int):
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
    optim = build_optimizer(case.optimizer, model, param_groups=case.param_groups, perturbed=seed != case.seed)
    return model, optim, build_app_state(case, side, optim, group=ctx.group(n))


def _train(case: Case, side: Side, model, optim, app=None, *, rank: int, continuation: bool = False) -> None:
    """``case.steps`` optimizer steps on data seeded by (seed, step, rank), drawn on the CPU.

    ``continuation``: the ``CONTINUE_STEPS`` steps after those, with the same batch
    on every rank, so the averaged gradient is the same whatever the number of ranks.
    A model with a BatchNorm gets the same batch on every rank throughout: its running
    statistics are buffers no engine keeps in step across ranks, and DCP saves one
    rank's copy of a replicated tensor (whichever it picks), so with per-rank data the
    checkpoint would legitimately hold another rank's statistics than rank 0's.
    """
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
    )


def options_extra(case: Case, side: Side) -> dict[str, bool]:
    """The side's ``StateDictOptions`` fields beyond the state-dict type and flattening: only those set,
    as an older torch may lack one the case never sets."""
    extra = {name: True for name in ("cpu_offload", "broadcast_from_rank0") if getattr(side, name)}
    if case.ignore_frozen_params:
        extra.update(ignore_frozen_params=True, strict=False)
    return extra


def _options(case: Case, side: Side):
    return rank_steps.state_dict_options(
        full=side.state_dict == "full", flatten=case.flatten_optimizer_state_dict, extra=options_extra(case, side)
    )


def _side_state_dict(case: Case, side: Side, model, optim, app=None) -> dict[str, Any]:
    return rank_steps.get_side_state(
        model, optim, kind=side.state_dict, api=side.state_dict_api, options=_options(case, side), app=app
    )


def _set_side_state_dict(case: Case, side: Side, model, optim, state, *, rank: int) -> None:
    rank_steps.set_side_state(
        model, optim, state, kind=side.state_dict, api=side.state_dict_api, options=_options(case, side), rank=rank
    )


def _any_rank(flag: bool, group, device: str) -> bool:
    """Whether ``flag`` is set on any rank of ``group`` (collective on it)."""
    votes = torch.tensor([int(flag)], device=rank_device(device))
    dist.all_reduce(votes, group=group)
    return bool(votes.item())
