"""What the installed torch offers, probed from its API (never from version strings).

Strategies ask this module which engines and options to draw; the ranks ask it
where to import each API from. Every "off" comes with the reason.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["Capabilities", "capabilities", "fully_shard_fn"]


@dataclasses.dataclass(frozen=True)
class Capabilities:
    torch_version: str
    engines: tuple[str, ...]
    flatten_optimizer_state_dict: bool
    off: dict[str, str]  # feature -> why it is switched off

    def table(self) -> list[tuple[str, str, str]]:
        """(feature, on/off, reason) rows for ``shardfuzz capabilities``."""
        rows = [(f"engine {e}", "on", "") for e in self.engines]
        if self.flatten_optimizer_state_dict:
            rows.append(("flatten_optimizer_state_dict", "on", ""))
        rows += [(name, "off", why) for name, why in sorted(self.off.items())]
        return rows


def _find(candidates: list[tuple[str, str]]) -> Any | None:
    for module, attr in candidates:
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
    return None


@functools.cache
def fully_shard_fn() -> Callable | None:
    """FSDP2's ``fully_shard``: public since torch 2.6, ``_composable.fsdp`` before."""
    return _find([
        ("torch.distributed.fsdp", "fully_shard"),
        ("torch.distributed._composable.fsdp", "fully_shard"),
    ])


@functools.cache
def capabilities() -> Capabilities:
    import torch

    off: dict[str, str] = {}
    engines: list[str] = []

    if _find([("torch.distributed.checkpoint.state_dict", "get_state_dict")]) is None:
        raise RuntimeError(
            f"torch {torch.__version__} has no torch.distributed.checkpoint.state_dict helpers; "
            "shardfuzz needs torch >= 2.4"
        )
    if _find([("torch.distributed.fsdp", "FullyShardedDataParallel")]) is not None:
        engines.append("fsdp1")
    else:
        off["engine fsdp1"] = "torch.distributed.fsdp.FullyShardedDataParallel is missing"
    from_group = _find([("torch.distributed.device_mesh", "DeviceMesh")])
    if fully_shard_fn() is None:
        off["engine fsdp2"] = "no fully_shard in torch.distributed.fsdp or torch.distributed._composable.fsdp"
    elif from_group is None or not hasattr(from_group, "from_group"):
        off["engine fsdp2"] = "DeviceMesh.from_group is missing (needed to shard on rank subgroups)"
    else:
        engines.append("fsdp2")

    from torch.distributed.checkpoint.state_dict import StateDictOptions

    fields = {f.name for f in dataclasses.fields(StateDictOptions)}
    flatten = "flatten_optimizer_state_dict" in fields
    if not flatten:
        off["flatten_optimizer_state_dict"] = "StateDictOptions has no flatten_optimizer_state_dict field"
    return Capabilities(torch.__version__, tuple(engines), flatten, off)
