"""Checkpoint targets with deliberate, realistic faults, for proving the oracles can fail.

Each wraps the real DCP target and goes through the same public seam a user's
own save/load code would (``shardfuzz run --target faults:...``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from shardfuzz.targets import DcpTarget


def _local(value):
    """The rank-local tensor behind a DTensor, ShardedTensor or plain tensor (None if empty)."""
    if hasattr(value, "to_local"):
        value = value.to_local()
    elif hasattr(value, "local_shards"):
        shards = value.local_shards()
        value = shards[0].tensor if shards else None
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() > 0:
        return value
    return None


def _is_last_rank(process_group) -> bool:
    return dist.get_rank() == dist.get_world_size(process_group) - 1


class PerturbOneLoadedElement(DcpTarget):
    """After a correct load, the last rank's first non-empty model shard is off by one in one element."""

    def load(self, state_dict, *, checkpoint_id, process_group):
        super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        if not _is_last_rank(process_group):
            return
        for value in state_dict["model"].values():
            local = _local(value)
            if local is not None:
                with torch.no_grad():
                    local.view(-1)[0] += 1.0
                return


def _moments(optim_state):
    """Local first-moment tensors (Adam ``exp_avg``, SGD ``momentum_buffer``) in key order."""
    found = []
    if "state" in optim_state and isinstance(optim_state["state"], dict):  # nested form
        for fqn in sorted(optim_state["state"]):
            for name in ("exp_avg", "momentum_buffer"):
                if name in optim_state["state"][fqn]:
                    found.append(optim_state["state"][fqn][name])
    else:  # flattened form: "state.<fqn>.<name>"
        found = [optim_state[k] for k in sorted(optim_state) if k.endswith((".exp_avg", ".momentum_buffer"))]
    return [t for t in (_local(v) for v in found) if t is not None]


class SwapOptimizerMoments(DcpTarget):
    """After a correct load, two parameters' first moments of the same local shape are swapped."""

    def load(self, state_dict, *, checkpoint_id, process_group):
        super().load(state_dict, checkpoint_id=checkpoint_id, process_group=process_group)
        moments = _moments(state_dict["optim"])
        for i, a in enumerate(moments):
            for b in moments[i + 1:]:
                if a.shape == b.shape:
                    with torch.no_grad():
                        saved = a.clone()
                        a.copy_(b)
                        b.copy_(saved)
                    return


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
