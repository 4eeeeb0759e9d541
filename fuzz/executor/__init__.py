"""Running Cases on real ranks: the warm pool (``pool``, its processes in ``rank_processes``), torchrun's ranks
(``torchrun``), one rank's loop (``worker``), the messages between them (``messages``), and what they share
without processes: the admission check before a case (``admission``), deadlines (``deadlines``), folding rank
reports into a verdict (``fold``).

Every executor has the shape of ``Executor``: the campaign, replay and the self-test take any of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from shardfuzz.case import Case
    from shardfuzz.verdict import Verdict

__all__ = ["CaseAbandoned", "Executor", "PoolStartError", "RankPool", "pool_for"]


class Executor(Protocol):
    """Runs cases on ``world_size`` ranks. ``run`` never raises for a case's own failure: a refused case
    (``admission.admit``) is an ``unsupported`` verdict, a crash or a hang is a verdict too."""

    world_size: int

    def run(self, case: Case, /) -> Verdict: ...

    def cannot_run(self, case: Case, /) -> str:
        """Why this executor cannot run ``case`` here (a side on a device it lacks, too few ranks), or ''."""
        ...

    def close(self) -> None: ...


def pool_for(world_size: int, *, target: str | None = None, measured_deadlines: bool = False, **options):
    """The warm ranks for ``target``: a ``RankPool`` of ``world_size`` ranks, or ``per_side.PerSidePools`` (a pool
    of each side's size, up to ``world_size``) for a target whose sides each span a pool of their own
    (``TargetSupport.per_side_pools``). ``options`` are ``RankPool``'s; ``measured_deadlines``: each pool
    measures its cases' deadlines (``MeasuredDeadlines``)."""
    from shardfuzz.executor.deadlines import MeasuredDeadlines
    from shardfuzz.executor.per_side import PerSidePools
    from shardfuzz.executor.pool import RankPool
    from shardfuzz.targets import DEFAULT_TARGET, support_for

    target = target or DEFAULT_TARGET
    if support_for(target).per_side_pools:
        return PerSidePools(world_size, target=target, measured_deadlines=measured_deadlines, **options)
    deadlines = MeasuredDeadlines() if measured_deadlines else None
    return RankPool(world_size, target=target, deadlines=deadlines, **options)


def __getattr__(name: str) -> Any:
    """The pool's names, imported on first use: ``export`` and ``torchrun`` use this package's helpers
    without the pool."""
    if name in ("CaseAbandoned", "PoolStartError", "RankPool"):
        from shardfuzz.executor import pool

        return getattr(pool, name)
    raise AttributeError(f"module 'shardfuzz.executor' has no attribute {name!r}")
