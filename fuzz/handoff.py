"""What a save run hands the load run when they are two runs (two interpreters, two torches).

In one run, rank 0 keeps the saved side's gathered state in memory until it judges the
load. When the save side runs on ranks of one Python and the load side on ranks of
another, rank 0 of the save run writes that state beside the checkpoint and rank 0 of
the load run reads it back. The file holds plain data only (tensors, numbers, strings,
lists and dicts, as ``rank_steps.plain`` makes them) and is read with
``torch.load(weights_only=True)``: no object of either torch is unpickled in the other.
"""

from __future__ import annotations

import os
from typing import Any

import attrs

__all__ = ["Handoff", "handoff_path", "read_handoff", "write_handoff"]


@attrs.frozen
class Handoff:
    """The saved side's full state (``expected``), its state after the continuation steps
    (``expected_after``, or None), and the torch that saved it."""

    torch_version: str
    expected: dict[str, Any]
    expected_after: dict[str, Any] | None = None


def handoff_path(checkpoint_dir: str) -> str:
    """Where the handoff of the checkpoint at ``checkpoint_dir`` lies: a sibling file, not inside the
    checkpoint (a loader that lists the checkpoint's folder must not see it)."""
    return os.path.normpath(checkpoint_dir) + ".saved-state.pt"


def write_handoff(checkpoint_dir: str, handoff: Handoff) -> None:
    import torch

    path = handoff_path(checkpoint_dir)
    data = {"torch": str(handoff.torch_version), "expected": handoff.expected, "expected_after": handoff.expected_after}
    torch.save(data, path + ".partial")
    os.replace(path + ".partial", path)


def read_handoff(checkpoint_dir: str) -> Handoff:
    import torch

    path = handoff_path(checkpoint_dir)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: the save run left no saved state here (did it run, on this folder?)")
    data = torch.load(path, weights_only=True)
    return Handoff(data["torch"], data["expected"], data["expected_after"])
