"""One warm pool per side size, for a target whose sides must each span their world.

DeepSpeed meets on the default process group (its ``save_checkpoint`` and ZeRO 3's set-up: a side on 2 ranks
of a pool of 3 hangs there), so a side of such a target cannot run on part of a pool. A checkpoint saved on
``m`` ranks and loaded on ``n`` is then two pools' work: the save half on a pool of ``m`` ranks, the load half
on one of ``n`` (``phases.save_then_load``), each pool started the first time a side of its size comes and kept
warm after. A case whose sides have one size runs whole on that size's pool.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from shardfuzz.case import Case
from shardfuzz.executor.admission import admit, cannot_run
from shardfuzz.executor.deadlines import MeasuredDeadlines
from shardfuzz.executor.phases import save_then_load
from shardfuzz.executor.pool import _SCRATCH_PREFIX, RankPool, scratch_root, sweep_stale_scratch
from shardfuzz.executor.referee import refereed
from shardfuzz.targets import DEFAULT_TARGET
from shardfuzz.verdict import Verdict

__all__ = ["PerSidePools"]


class PerSidePools:
    """Pools of 1 to ``world_size`` ranks, each started when a side of its size first comes. The options are
    ``RankPool``'s; ``measured_deadlines`` gives each pool its own ``MeasuredDeadlines`` (a pool's speed is its
    size's)."""

    def __init__(
        self,
        world_size: int = 4,
        *,
        target: str = DEFAULT_TARGET,
        device: str = "cpu",
        measured_deadlines: bool = False,
        **options,
    ):
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.world_size, self.target, self.device = world_size, target, device
        self.measured_deadlines = measured_deadlines
        self.options = options
        self.pools: dict[int, RankPool] = {}
        self._scratch: str | None = None

    def __enter__(self) -> PerSidePools:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def pool(self, size: int) -> RankPool:
        """The warm pool of ``size`` ranks (made on first use; it starts its ranks at its first case)."""
        if size not in self.pools:
            deadlines = MeasuredDeadlines() if self.measured_deadlines else None
            self.pools[size] = RankPool(
                size, target=self.target, device=self.device, deadlines=deadlines, **self.options
            )
        return self.pools[size]

    @property
    def case_timeout(self) -> float | None:
        return self.options.get("case_timeout")

    @case_timeout.setter
    def case_timeout(self, seconds: float | None) -> None:
        self.options["case_timeout"] = seconds
        for pool in self.pools.values():
            pool.case_timeout = seconds

    @property
    def events(self) -> list:
        return [event for pool in self.pools.values() for event in pool.events]

    @property
    def starts(self) -> int:
        return sum(pool.starts for pool in self.pools.values())

    def start(self) -> None:
        if self._scratch is None:
            sweep_stale_scratch()
            self._scratch = tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{os.getpid()}-sides-", dir=scratch_root())

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def cannot_run(self, case: Case) -> str:
        return cannot_run(case, world_size=self.world_size, target=self.target, device=self.device, per_side=True)

    def rss_bytes(self) -> int:
        return sum(pool.rss_bytes() for pool in self.pools.values())

    def run(self, case: Case, *, generic_deadline: bool = False) -> Verdict:
        """The case's verdict: run whole on its sides' pool where they have one size, else in two halves."""
        refused = admit(case, world_size=self.world_size, target=self.target, device=self.device, per_side=True)
        if refused is not None:
            return refused
        save, load = case.save.world_size, case.load.world_size
        if save == load:
            return self.pool(save).run(case, generic_deadline=generic_deadline, admitted=True)
        self.start()
        assert self._scratch is not None
        checkpoint_dir = os.path.join(self._scratch, "case")
        verdict = save_then_load(
            self.pool(save), self.pool(load), case, checkpoint_dir, generic_deadline=generic_deadline, admitted=True
        )
        return refereed(case, verdict, lambda wider: self.run(wider, generic_deadline=generic_deadline))
