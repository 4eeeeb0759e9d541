"""The one check every executor makes before it runs a case: can this case run here, on these ranks?

A case torch documents as unsupported (``shardfuzz.unsupported``), one that writes its
checkpoint through a storage variant while a user's target does its own I/O, one outside the
target's declared ``TargetSupport``, one whose
broadcasting load must span a world of another size, or one with a CUDA side where the
ranks have no GPU (or too few) is answered with an ``unsupported`` verdict, never run.
A case needing more ranks than there are is the caller's mistake: ``ValueError``.
"""

from __future__ import annotations

from shardfuzz.case import Case
from shardfuzz.targets import DEFAULT_TARGET, support_for
from shardfuzz.unsupported import excluded, needs_other_world
from shardfuzz.verdict import Verdict

__all__ = ["admit", "cannot_run"]


def admit(
    case: Case, *, world_size: int, target: str = DEFAULT_TARGET, device: str = "cpu", per_side: bool = False
) -> Verdict | None:
    """None when ``case`` may run on ``world_size`` ranks (on ``device``, against ``target``); else the
    ``unsupported`` verdict that says why not. ``per_side``: each side runs on a pool of its own size
    (``PerSidePools``, up to ``world_size`` ranks)."""
    if case.world_size > world_size:
        raise ValueError(f"case needs {case.world_size} ranks, the executor has {world_size}")
    rule = excluded(case)
    if rule is not None:
        return Verdict("unsupported", detail=f"{rule.name}: {rule.reason}")
    why_not_here = cannot_run(case, world_size=world_size, target=target, device=device, per_side=per_side)
    if why_not_here:
        return Verdict("unsupported", detail=why_not_here)
    return None


def cannot_run(
    case: Case, *, world_size: int, target: str = DEFAULT_TARGET, device: str = "cpu", per_side: bool = False
) -> str:
    """Why these ranks cannot run ``case`` (its CUDA sides, on this machine; a storage variant with a
    user's target; one outside what the target declares it supports; a broadcasting load side on fewer ranks than the world), or ''."""
    support = support_for(target)
    if not support.allows_storage(case):
        return (
            f"storage: the case writes its checkpoint as {case.storage!r}, a variant of the default "
            f"target; this pool's target {target} does its own I/O"
        )
    refused = support.refuses(case, world_size=world_size, per_side=per_side)
    if refused:
        return f"{refused} (target {target})"
    if per_side and case.loop.resumes > 1 and case.save.world_size != case.load.world_size:
        return "per-side pools: a second round-trip runs within one pool, and these sides need two"
    other_world = "" if per_side else needs_other_world(case, world_size)
    if other_world:
        return other_world
    needed = max((s.world_size for s in (case.save, case.load) if s.device == "cuda"), default=0)
    if not needed:
        return ""
    needed += case.loop.ranks_from  # rank i's GPU is GPU i of the world
    if device != "cuda":
        return (
            "cuda-side: the case puts a side on cuda and this pool's ranks run on CPU only "
            "(run with --device cuda on a machine with a GPU)"
        )
    from shardfuzz.capabilities import capabilities

    gpus = capabilities().cuda_devices
    if needed > gpus:
        return (
            f"cuda-side: a cuda side on {needed} ranks needs {needed} GPUs (NCCL runs one rank per GPU; "
            f"two on one fail with 'Duplicate GPU detected'), and this machine has {gpus}"
        )
    return ""
