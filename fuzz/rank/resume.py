"""A case's second round-trip (``Loop.resumes`` 2): the load side trains on and saves again, and a fresh build of
the save side's layout loads that checkpoint, as a job that is preempted twice resumes twice.

The load side saves with the same objects it loaded into (its held model state dict, where it holds one, and the
same checkpoint target), so what a load leaves behind in them (a dict no longer pointing at the live parameters,
a target's cached plan) reaches the second checkpoint. The checkpoint crosses back to the save side's layout.
"""

from __future__ import annotations

import os

from shardfuzz.case import Case
from shardfuzz.rank.context import RankContext
from shardfuzz.rank.oracles import RESUMED_ORACLE, compare_state
from shardfuzz.rank.portable.optimizers import add_late_group
from shardfuzz.rank.portable.steps import gather_full
from shardfuzz.rank.side_steps import (
    CONTINUE_STEPS,
    SAVE_FAILED_WAIT,
    agree_whether_a_save_failed,
    build_side,
    load_into,
    save_from,
    train,
)
from shardfuzz.targets import FinishesSave
from shardfuzz.verdict import Mismatch

__all__ = ["RESUMED_DIR", "second_round_trip"]

#: The second checkpoint's folder, inside the case's.
RESUMED_DIR = "resumed"


def second_round_trip(case: Case, ctx: RankContext, target, checkpoint_dir: str, loaded) -> list[Mismatch]:
    """This rank's share of the second round-trip. ``loaded``: on a load rank, the objects its first load filled
    (model, optimizer, training state, held model state dict); None elsewhere. Collective on the whole world."""
    second_dir = os.path.join(checkpoint_dir, RESUMED_DIR)
    expected = None
    if loaded is not None:
        try:
            expected = _save_again(case, ctx, target, second_dir, *loaded)
        except BaseException:
            agree_whether_a_save_failed(failed=True, wait=SAVE_FAILED_WAIT)
            raise
    del loaded
    ctx.enter("barrier-resumed")
    if agree_whether_a_save_failed(failed=False):
        return []  # the load ranks that raised report why
    if ctx.rank >= case.save.world_size:
        return []
    side = case.save
    ctx.enter("build-resumed")
    model, optim, app = build_side(case, side, case.model, ctx, target, seed=case.seed + 2)
    if case.loop.late_group:  # a resume past the point where the loop added the group: the checkpoint holds it
        add_late_group(optim, model)
    ctx.enter("gather-before-resumed")
    before = gather_full(model, optim, app)
    ctx.enter("load-resumed")
    load_into(case, side, model, optim, ctx, target, second_dir, app, saved_by=case.load)
    ctx.enter("gather-resumed")
    actual = gather_full(model, optim, app)
    if ctx.rank != 0 or expected is None:  # rank 0 saved again, so holds the state it saved
        return []
    ctx.enter("compare-resumed")
    return compare_state(expected, actual, rank=0, oracle=RESUMED_ORACLE, before=before)


def _save_again(case: Case, ctx: RankContext, target, second_dir: str, model, optim, app, held):
    """Train the loaded side on and save it again; the state gathered before that save (on rank 0)."""
    side = case.load
    ctx.enter("train-resumed")
    train(case, side, model, optim, app, rank=ctx.rank, first=case.steps + CONTINUE_STEPS)
    ctx.enter("gather-saved-again")
    expected = gather_full(model, optim, app)
    ctx.enter("save-again")
    group = ctx.group(side.world_size)
    save_from(case, side, model, optim, app, target, second_dir, process_group=group, held=held)
    if isinstance(target, FinishesSave):
        ctx.enter("finish-save-again")
        target.finish_save()
    return expected
