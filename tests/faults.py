"""Checkpoint targets that misbehave, for the executor's and the corpus's tests.

The catalogue of realistic checkpointing bugs lives in ``shardfuzz.targets.mutants``
(``shardfuzz selftest``); two of them are re-exported here for the older tests.
These add ranks that raise, exit, hang or die on cue, and flaky or
"unsupported" outcomes. Each goes through the same public seam a user's own
save/load code would (``shardfuzz run --target faults:...``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch.distributed as dist

from shardfuzz.targets import DcpTarget
from shardfuzz.targets.mutants import PerturbOneLoadedElement
from shardfuzz.targets.mutants import SwapMomentsBetweenParameters as SwapOptimizerMoments  # noqa: F401
from shardfuzz.targets.mutants import _last_rank as _is_last_rank

# --- misbehaving ranks, armed by a flag file so a test can disarm them --------

FLAG = "SHARDFUZZ_TEST_FAULT_FLAG"


def _armed() -> bool:
    flag = os.environ.get(FLAG)
    return bool(flag) and Path(flag).exists()


class RaiseOnRankOne(DcpTarget):
    """Rank 1 raises before the load's collectives; its peers block in them."""

    def load(self, state_dict, *, checkpoint_id, process_group):
        if _armed() and dist.get_rank() == 1:
            raise RuntimeError("injected failure on rank 1")
        super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)


class ExitOnSave(DcpTarget):
    """Rank 1 exits abruptly (as a segfault or OOM kill would) during save."""

    def save(self, state_dict, *, checkpoint_id, process_group):
        if _armed() and dist.get_rank() == 1:
            os._exit(3)
        super().save(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)


class RaiseOnSave(DcpTarget):
    """Every rank of the save side raises in save; ranks outside it wait to load."""

    def save(self, state_dict, *, checkpoint_id, process_group):
        if _armed():
            raise RuntimeError("injected save failure")
        super().save(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)


class HangOnLoad(DcpTarget):
    """Rank 0 never returns from load."""

    def load(self, state_dict, *, checkpoint_id, process_group):
        if _armed() and dist.get_rank() == 0:
            time.sleep(3600)
        super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)


class PerturbEveryOtherLoad(PerturbOneLoadedElement):
    """The perturbation on the 1st, 3rd, 5th ... load in this rank process: a flaky fault."""

    loads = 0

    def load(self, state_dict, *, checkpoint_id, process_group):
        type(self).loads += 1
        if self.loads % 2:
            super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        else:
            DcpTarget.load(self, state_dict, checkpoint_id=checkpoint_id, process_group=process_group)


class PerturbOnTwoRanks(PerturbOneLoadedElement):
    """The perturbation only where the load side has two ranks or more: the smallest case passes.

    So one drawn case rarely finds it, and a run that finds it at once must have
    replayed it from an example database.
    """

    def load(self, state_dict, *, checkpoint_id, process_group):
        if dist.get_world_size(process_group) >= 2:
            super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        else:
            DcpTarget.load(self, state_dict, checkpoint_id=checkpoint_id, process_group=process_group)


class RejectAsUnsupported(DcpTarget):
    """Raises as torch does for a feature it documents as not implemented (when armed)."""

    def save(self, state_dict, *, checkpoint_id, process_group):
        if _armed():
            raise NotImplementedError("Resharding to smaller mesh is not supported for DTensor parameters yet")
        super().save(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)


# --- rank deaths of every kind, for the executor's soak test -------------------

SOAK_CONTROL = "SHARDFUZZ_SOAK_CONTROL"


def _no_core_files() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _abort_at_exit() -> None:
    _no_core_files()
    os.abort()


def _die(how: str) -> None:
    """Die as a real rank does: a segfault, an abort, an abrupt exit, or the OOM killer's SIGKILL."""
    import ctypes
    import signal

    sys.stderr.write(f"soak: rank {dist.get_rank()} about to die by {how}\n")
    sys.stderr.flush()
    _no_core_files()
    if how == "segfault":
        ctypes.string_at(0)
    elif how == "abort":
        os.abort()
    elif how == "exit":
        os._exit(7)
    elif how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise ValueError(f"unknown way to die: {how}")


class SoakFaults(DcpTarget):
    """Reads one instruction per case from the file named by $SHARDFUZZ_SOAK_CONTROL.

    ``crash:<how>``: the last rank of the save side dies in save. ``hang``: rank 0
    sleeps in load. ``teardown``: every rank aborts when it exits (after the case
    passed). Anything else: a correct DCP round-trip.
    """

    def _instruction(self) -> str:
        try:
            return Path(os.environ[SOAK_CONTROL]).read_text().strip()
        except (KeyError, OSError):
            return ""

    def save(self, state_dict, *, checkpoint_id, process_group):
        order = self._instruction()
        if order.startswith("crash:") and _is_last_rank(process_group):
            _die(order.split(":", 1)[1])
        if order == "teardown":
            import atexit

            atexit.register(_abort_at_exit)
        super().save(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)

    def load(self, state_dict, *, checkpoint_id, process_group):
        if self._instruction() == "hang" and dist.get_rank() == 0:
            time.sleep(3600)
        super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)


# --- a fault in a shared round-trip step (rank_steps), for the single-implementation test ----


def set_side_state(model, optim, state, *, kind, api, options, rank):
    """``rank_steps.set_side_state`` that forgets the optimizer: sets the model's state only."""
    from torch.distributed.checkpoint import state_dict as dsd

    dsd.set_model_state_dict(model, state["model"], options=options)
