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

__all__ = ["Capabilities", "capabilities", "dtensor", "fully_shard_fn"]


@dataclasses.dataclass(frozen=True)
class Capabilities:
    torch_version: str
    engines: tuple[str, ...]
    flatten_optimizer_state_dict: bool
    off: dict[str, str]  # feature -> why it is switched off
    hsdp: bool = False  # 2-D meshes (FSDP2 HSDP, FSDP1 hybrid strategies)
    fsdp2_shard_dim: bool = False  # fully_shard(shard_placement_fn=...)

    def table(self) -> list[tuple[str, str, str]]:
        """(feature, on/off, reason) rows for ``shardfuzz capabilities``."""
        rows = [(f"engine {e}", "on", "") for e in self.engines]
        for name in ("flatten_optimizer_state_dict", "hsdp", "fsdp2_shard_dim"):
            if getattr(self, name):
                rows.append((name, "on", ""))
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
def dtensor():
    """The module with ``DTensor``, ``Shard`` and ``Replicate``: public since torch 2.5, ``_tensor`` before."""
    for name in ("torch.distributed.tensor", "torch.distributed._tensor"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if all(hasattr(module, attr) for attr in ("DTensor", "Shard", "Replicate")):
            return module
    raise ImportError("no DTensor in torch.distributed.tensor or torch.distributed._tensor")


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

    engines += ["ddp", "unsharded"]  # DistributedDataParallel and a plain module: always there

    import inspect

    hsdp = from_group is not None and "mesh" in inspect.signature(from_group.from_group).parameters
    if not hsdp:
        off["hsdp"] = "DeviceMesh.from_group takes no mesh= (needed to build 2-D meshes on rank subgroups)"
    shard_dim = "fsdp2" in engines and "shard_placement_fn" in inspect.signature(fully_shard_fn()).parameters
    if "fsdp2" in engines and not shard_dim:
        off["fsdp2_shard_dim"] = "fully_shard has no shard_placement_fn (sharding on a dim other than 0)"

    from torch.distributed.checkpoint.state_dict import StateDictOptions

    fields = {f.name for f in dataclasses.fields(StateDictOptions)}
    flatten = "flatten_optimizer_state_dict" in fields
    if not flatten:
        off["flatten_optimizer_state_dict"] = "StateDictOptions has no flatten_optimizer_state_dict field"
    return Capabilities(torch.__version__, tuple(engines), flatten, off, hsdp=hsdp, fsdp2_shard_dim=shard_dim)
