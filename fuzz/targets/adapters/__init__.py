"""Shipped object-level targets for training frameworks' checkpoint APIs, one module each.

Each module imports its framework at import time, so a missing or broken install shows as
that target being unavailable (``shardfuzz targets`` prints the error), and defines one
``ObjectTarget`` with a ``framework`` attribute (the distribution whose version it reports)
and a ``support`` (``TargetSupport``) that says which cases the framework's code can take.
They are reached by short name: ``--target accelerate``, ``lightning``, ``torchtitan``.
"""

from __future__ import annotations

__all__ = ["engine_kind", "whole_group_rank"]


def engine_kind(side: dict) -> str:
    """The side's engine class name (``FSDP1``, ``FSDP2``, ``DDP``, ``Unsharded``)."""
    return side["engine"]["kind"]


def whole_group_rank(process_group) -> tuple[int, int]:
    """``(rank, world size)`` in ``process_group``; the adapters' sides span the whole pool, so these
    are the default group's too, which the frameworks use on their own."""
    import torch.distributed as dist

    return dist.get_rank(process_group), dist.get_world_size(process_group)
