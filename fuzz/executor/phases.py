"""A case in two halves on two pools, over one checkpoint folder: its save half on the first pool's ranks (whose
rank 0 also writes the saved side's gathered state beside the checkpoint, ``rank.portable.handoff``), then its load
half on the second's, whose rank 0 reads that state and runs the oracles. A failure of the save half is the case's
verdict: the load half never starts on a checkpoint that was not written.

Two executors run cases this way: ``cross.CrossVersionPool`` (the pools in two Pythons) and
``per_side.PerSidePools`` (pools of two sizes).
"""

from __future__ import annotations

import os
import shutil

import attrs

from shardfuzz.case import Case
from shardfuzz.rank.portable.handoff import handoff_path
from shardfuzz.verdict import Verdict

__all__ = ["save_then_load"]


def save_then_load(
    save_pool, load_pool, case: Case, checkpoint_dir: str, *, generic_deadline: bool = False, admitted: bool = False
) -> Verdict:
    """The case's verdict: the save half's where it did not pass, else the load half's (seconds: both). The
    checkpoint folder and the handoff beside it are removed afterwards. ``admitted``: the caller has admitted the
    case already (``RankPool.run``)."""
    try:
        saved = save_pool.run(
            case, generic_deadline=generic_deadline, phase="save", checkpoint_dir=checkpoint_dir, admitted=admitted
        )
        if saved.status != "pass":
            return saved
        loaded = load_pool.run(
            case, generic_deadline=generic_deadline, phase="load", checkpoint_dir=checkpoint_dir, admitted=admitted
        )
        return attrs.evolve(loaded, seconds=saved.seconds + loaded.seconds)
    finally:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        try:
            os.unlink(handoff_path(checkpoint_dir))
        except FileNotFoundError:
            pass
