"""One rank's part of one case: build, train, save, rebuild on the load side, load, judge.

Every rank of the pool calls ``run_case`` with the same Case. Ranks ``0..n-1``
form the save side's group (n = ``case.save.world_size``); ranks ``0..m-1`` the
load side's (ranks within the case, counted from the global rank ``case.loop.ranks_from``).
Ranks outside a side skip it; one world barrier between save and load is the only
synchronisation the fuzzer adds (the load must see a finished checkpoint). Rank 0 belongs to both sides, so it holds the gathered saved and
loaded state and runs the oracles. A case that resumes twice (``Loop.resumes``)
then saves again from the load side and loads into the save side's layout
(``resume.second_round_trip``). One side's steps are in ``side_steps``.

A case may also run as two runs (``phase`` "save", then "load"), on two pools that
may run two torches: the save run's rank 0 then hands the saved state to the load
run's through a file beside the checkpoint (``shardfuzz.rank.portable.handoff``).
"""

from __future__ import annotations

import os

import attrs
import torch

from shardfuzz.case import FSDP2, PP, TP, Case, ZeRO
from shardfuzz.rank import oracles, resume, sharded_checks
from shardfuzz.rank.context import RankContext
from shardfuzz.rank.oracles import compare_state
from shardfuzz.rank.portable.handoff import one_torch_hyperparameters, read_handoff, write_handoff
from shardfuzz.rank.portable.optimizers import add_late_group
from shardfuzz.rank.portable.steps import gather_full
from shardfuzz.rank.side_steps import (
    CONTINUE_STEPS,
    SAVE_FAILED_WAIT,
    agree_whether_a_save_failed,
    any_rank,
    build_side,
    checkpoint_io,
    held_model_state,
    load_into,
    options_extra,
    save_from,
    side_description,
    train,
)
from shardfuzz.targets import CheckpointTarget, FinishesSave, ObjectTarget
from shardfuzz.verdict import Mismatch

__all__ = [
    "CONTINUE_STEPS",
    "PHASES",
    "SECOND_SAVE_DIR",
    "RankContext",
    "options_extra",
    "run_case",
    "side_description",
]

#: The folder of ``Loop.second_save``'s checkpoint, inside the first's.
SECOND_SAVE_DIR = "second"

#: ``run_case``'s phases: the whole case, or its save or load half (run by two pools, in that order).
PHASES = ("both", "save", "load")


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
    ctx.begin(case, phase)
    target = checkpoint_io(case, target)
    if phase != "load" and ctx.rank < case.save.world_size:
        try:
            expected, expected_after, mismatches = _save_side(case, ctx, target, checkpoint_dir, phase)
        except BaseException:
            if phase == "both":  # the ranks waiting to load would otherwise wait for this one until the deadline
                agree_whether_a_save_failed(failed=True, wait=SAVE_FAILED_WAIT)
            raise
    if phase == "both":
        ctx.enter("barrier")
        if agree_whether_a_save_failed(failed=False):
            ctx.enter("idle")
            return mismatches  # nothing to load: the save ranks that raised report why
    loaded = None  # the load side's objects, kept for a second round-trip
    if phase != "save" and ctx.rank < case.load.world_size:
        if case.load_mutation is not None:
            mismatches += _load_incompatible(case, ctx, target, checkpoint_dir)
        else:
            if phase == "load" and ctx.rank == 0:
                ctx.enter("take-over")
                saved_by, expected, expected_after = read_handoff(checkpoint_dir)
            judged, loaded = _load_and_judge(
                case, ctx, target, checkpoint_dir, expected, expected_after, saved_by=saved_by
            )
            mismatches += judged
    if case.loop.resumes > 1 and phase == "both":
        mismatches += resume.second_round_trip(case, ctx, target, checkpoint_dir, loaded)
    ctx.enter("idle")
    return mismatches


def _save_side(case: Case, ctx: RankContext, target, checkpoint_dir: str, phase: str):
    """This rank's share of the save side: build, train, save (and what the checks run after it); the state
    gathered before the save and after the continuation, and the mismatches the save side's checks found."""
    mismatches: list[Mismatch] = []
    expected_after = None
    ctx.enter("build-save")
    model, optim, app = build_side(case, case.save, case.model, ctx, target, seed=case.seed)
    held = held_model_state(case, case.save, model, held=case.loop.save_held)  # before the first forward
    ctx.enter("train")
    train(case, case.save, model, optim, app, rank=ctx.rank)
    ctx.enter("gather-saved")
    expected = gather_full(model, optim, app)
    ctx.enter("save")
    save_from(
        case, case.save, model, optim, app, target, checkpoint_dir, process_group=ctx.checkpoint_group(case), held=held
    )
    if case.loop.late_group:  # what the checkpoint holds is saved: the loop unfreezes a module from here on
        ctx.enter("late-group")
        add_late_group(optim, model)
    continued = "continuation" in case.checks and case.load_mutation is None
    if continued or case.loop.second_save:
        ctx.enter("continue-saved")
        train(case, case.save, model, optim, app, rank=ctx.rank, continuation=True)
        if continued:
            expected_after = gather_full(model, optim, app)
    if case.loop.second_save:  # before the first is waited for: an async one is in flight
        ctx.enter("save-second")
        group = ctx.checkpoint_group(case, second=True)
        second_dir = os.path.join(checkpoint_dir, SECOND_SAVE_DIR)
        save_from(case, case.save, model, optim, app, target, second_dir, process_group=group, held=held)
    del held
    if "api-parity" in case.checks:
        ctx.enter("api-parity")
        mismatches += sharded_checks.api_parity(
            case.save, model, optim, rank=ctx.rank, group=ctx.group(case.save.world_size)
        )
    if isinstance(target, FinishesSave):
        ctx.enter("finish-save")  # an async write has run alongside the phases above
        target.finish_save()
    if getattr(case.storage, "consolidated", False) and ctx.rank == 0:
        ctx.enter("consolidated-files")  # the files a Hugging Face user would read, read as they would
        model_part = {key: value for key, value in expected.items() if key.startswith("model.")}
        read = target.consolidated_files(checkpoint_dir)
        mismatches += compare_state(model_part, read, rank=0, oracle=oracles.CONSOLIDATED_ORACLE)
    del model, optim, app
    if phase == "save" and ctx.rank == 0:
        ctx.enter("hand-off")
        write_handoff(checkpoint_dir, expected, expected_after)
    return expected, expected_after, mismatches


def _load_and_judge(case, ctx, target, checkpoint_dir, expected, expected_after, *, saved_by=None):
    """Load into the rebuilt load side and judge it: the mismatches, and the load side's objects (model,
    optimizer, training state, held model state dict) for a second round-trip (None where the load was
    refused). ``saved_by``: the torch of a save run in another interpreter; where it differs from this one,
    continuation compares within its tolerance (another torch's kernels may round differently) even on an
    identical layout."""
    side = case.load
    mismatches: list[Mismatch] = []
    ctx.enter("build-load")
    model, optim, app = build_side(case, side, case.load_model(), ctx, target, seed=case.seed + 1)
    held = held_model_state(case, side, model, held=case.loop.load_held)
    ctx.enter("gather-before-load")
    before = gather_full(model, optim, app)
    ctx.enter("load")
    refused = None
    try:
        load_into(case, side, model, optim, ctx, target, checkpoint_dir, app, held=held)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        if not case.local_may_refuse:
            raise
        refused = exc
    if case.local_may_refuse and any_rank(refused is not None, ctx.group(side.world_size), side.device):
        return [], None  # refused loudly (on at least one rank): the outcome allowed there
    ctx.enter("gather-loaded")
    actual = gather_full(model, optim, app)
    replicas: list[Mismatch] = []
    if side.world_size > 1 and not isinstance(side.engine, ZeRO):  # ZeRO's partitions are no replicas of DSD's
        ctx.enter("replicas")
        replicas = sharded_checks.replica_consistency(model, optim, group=ctx.group(side.world_size), rank=ctx.rank)
    if isinstance(side.engine, (FSDP2, TP, PP)):
        ctx.enter("layout")
        mismatches += sharded_checks.layout(model, case.load_model(), side, rank=ctx.rank)
    if "full-offload" in case.checks:
        ctx.enter("full-offload")
        mismatches += sharded_checks.full_offload(model, optim, actual, rank=ctx.rank)
    if case.loop.late_group:  # judged above as loaded; from here on the loop trains the unfrozen module too
        ctx.enter("late-group")
        add_late_group(optim, model)
    if "continuation" in case.checks:
        ctx.enter("continue-loaded")
        train(case, side, model, optim, app, rank=ctx.rank, continuation=True)
        actual_after = gather_full(model, optim, app)
    across = saved_by not in (None, str(torch.__version__))
    if ctx.rank == 0 and across:  # hyperparameters one torch has and the other cannot hold: not the checkpoint's
        one_torch = one_torch_hyperparameters(expected, actual)
        expected, actual = _without(expected, one_torch), _without(actual, one_torch)
        if "continuation" in case.checks:
            expected_after, actual_after = _without(expected_after, one_torch), _without(actual_after, one_torch)
    if ctx.rank == 0:
        ctx.enter("compare")
        wanted = oracles.expected_after_load(expected, before, case.kept_by_load(), model_only=case.loads_model_only)
        mismatches += compare_state(wanted, actual, rank=0, before=before)
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
    return mismatches, (model, optim, app, held)


def _without(state: dict, keys) -> dict:
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
    model, optim, app = build_side(case, side, case.load_model(), ctx, target, seed=case.seed + 1)
    ctx.enter("load-incompatible")
    raised = None
    try:
        load_into(case, side, model, optim, ctx, target, checkpoint_dir, app)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raised = f"{type(exc).__name__}: {exc}"
    return oracles.loud_incompatible_load(case.load_mutation, raised, rank=ctx.rank)
