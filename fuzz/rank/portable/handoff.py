"""What a save run hands the load run when they are two runs (two interpreters, two torches).

In one run, rank 0 keeps the saved side's gathered state in memory until it judges the
load. When the save side runs on ranks of one Python and the load side on ranks of
another, rank 0 of the save run writes that state beside the checkpoint and rank 0 of
the load run reads it back. The file holds plain data only (tensors, numbers, strings,
lists and dicts, as ``rank_steps.plain`` makes them) and is read with
``torch.load(weights_only=True)``: no object of either torch is unpickled in the other.

Exported reproducers copy these functions as they are (their ``--phase save|load``).
"""

from __future__ import annotations

import os

__all__ = ["handoff_path", "one_torch_hyperparameters", "read_handoff", "write_handoff"]


def handoff_path(checkpoint_dir):
    """Where the handoff of the checkpoint at ``checkpoint_dir`` lies: a sibling file, not inside the
    checkpoint (a loader that lists the checkpoint's folder must not see it)."""
    return os.path.normpath(checkpoint_dir) + ".saved-state.pt"


def write_handoff(checkpoint_dir, expected, expected_after):
    """Save the saved side's full state (and its state after the continuation steps, or None) with the
    version of the torch that saved it."""
    import torch

    path = handoff_path(checkpoint_dir)
    data = {"torch": str(torch.__version__), "expected": expected, "expected_after": expected_after}
    torch.save(data, path + ".partial")
    os.replace(path + ".partial", path)


def read_handoff(checkpoint_dir):
    """``(saving torch's version, expected, expected_after)`` as ``write_handoff`` left them."""
    import torch

    path = handoff_path(checkpoint_dir)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: the save run left no saved state here (did it run, on this folder?)")
    data = torch.load(path, weights_only=True)
    return data["torch"], data["expected"], data["expected_after"]


def one_torch_hyperparameters(expected, actual):
    """Param-group entries only one of the two torches has: a hyperparameter one torch added
    (``decoupled_weight_decay``, say) cannot be in a checkpoint the other wrote, and the loading torch
    fills its default (or, older, has no place for it): not the checkpoint's to restore. The keys
    (``optim.param_groups.<group>.<name>``) of ``expected`` or ``actual`` whose ``<name>`` the other side
    has in no param group."""

    def names(state):
        return {key.rsplit(".", 1)[-1] for key in state if key.startswith("optim.param_groups.")}

    saved, loaded = names(expected), names(actual)
    only_one = (saved - loaded) | (loaded - saved)
    return {
        key
        for key in expected.keys() ^ actual.keys()
        if key.startswith("optim.param_groups.") and key.rsplit(".", 1)[-1] in only_one
    }
