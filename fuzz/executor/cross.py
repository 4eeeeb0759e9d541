"""Saved under one torch, loaded under another: two warm pools, one in each Python.

A case runs as two runs on one checkpoint folder (``phases.save_then_load``): its save half on the
save pool's ranks, then its load half on the load pool's. Both pools stay warm across cases, as a
single pool does.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable

from shardfuzz.case import Case
from shardfuzz.executor.deadlines import MeasuredDeadlines
from shardfuzz.executor.interpreters import Interpreter
from shardfuzz.executor.phases import save_then_load
from shardfuzz.executor.pool import _SCRATCH_PREFIX, RankPool, scratch_root, sweep_stale_scratch
from shardfuzz.targets import DEFAULT_TARGET
from shardfuzz.verdict import Verdict

__all__ = ["CrossVersionPool"]


class CrossVersionPool:
    """``world_size`` warm ranks in the ``save`` Python and as many in the ``load`` Python.

    The options are ``RankPool``'s; ``measured_deadlines`` gives each pool its own
    ``MeasuredDeadlines`` (their torches may differ in speed)."""

    def __init__(
        self,
        world_size: int = 4,
        *,
        save: Interpreter,
        load: Interpreter,
        target: str = DEFAULT_TARGET,
        case_timeout: float | None = None,
        abandon: Callable[[], bool] | None = None,
        device: str = "cpu",
        measured_deadlines: bool = False,
        **options,
    ):
        def pool(interpreter: Interpreter) -> RankPool:
            return RankPool(
                world_size,
                target=target,
                case_timeout=case_timeout,
                abandon=abandon,
                device=device,
                deadlines=MeasuredDeadlines() if measured_deadlines else None,
                interpreter=interpreter,
                **options,
            )

        self.world_size = world_size
        self.save, self.load = save, load
        self.save_pool, self.load_pool = pool(save), pool(load)
        self.torches = (str(save.torch_version), str(load.torch_version))
        self._scratch: str | None = None

    def __enter__(self) -> CrossVersionPool:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def case_timeout(self) -> float | None:
        return self.save_pool.case_timeout

    @case_timeout.setter
    def case_timeout(self, seconds: float | None) -> None:
        self.save_pool.case_timeout = self.load_pool.case_timeout = seconds

    @property
    def events(self) -> list:
        return self.save_pool.events + self.load_pool.events

    @property
    def starts(self) -> int:
        return self.save_pool.starts + self.load_pool.starts

    def start(self) -> None:
        if self._scratch is None:
            sweep_stale_scratch()
            self._scratch = tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{os.getpid()}-cross-", dir=scratch_root())
        self.save_pool.start()
        self.load_pool.start()

    def close(self) -> None:
        self.save_pool.close()
        self.load_pool.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def cannot_run(self, case: Case) -> str:
        return self.save_pool.cannot_run(case) or self.load_pool.cannot_run(case)

    def rss_bytes(self) -> int:
        return self.save_pool.rss_bytes() + self.load_pool.rss_bytes()

    def run(self, case: Case, *, generic_deadline: bool = False) -> Verdict:
        """The case's verdict: the save run's where it did not pass, else the load run's (seconds: both)."""
        if self._scratch is None:
            self.start()
        assert self._scratch is not None
        checkpoint_dir = os.path.join(self._scratch, "case")
        return save_then_load(self.save_pool, self.load_pool, case, checkpoint_dir, generic_deadline=generic_deadline)

    def alone(self, case: Case) -> dict[str, Verdict]:
        """The case run whole under each torch alone, by torch version (save side's first): where a
        failure across the two also fails under one of them alone, it is that torch's own bug."""
        return {
            str(self.save.torch_version): self.save_pool.run(case),
            str(self.load.torch_version): self.load_pool.run(case),
        }
