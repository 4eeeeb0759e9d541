"""Case deadlines: the generic one from a case's size, and ones learnt from the pool's own case times,
so that a hang costs seconds.

The generic deadline (``deadline_for``: 30 s and up) must hold on any
machine, for a cold rank's first case. Once a pool has run a few cases it knows
how long cases take *here*: a case still running at a few times the slowest
recent case is stuck. The generic deadline stays the ceiling, and the first cases
after each start of the ranks (torch's lazy set-up) keep it.
"""

from __future__ import annotations

from collections import deque

from shardfuzz.case import Case

__all__ = ["MeasuredDeadlines", "deadline_for"]


def deadline_for(case: Case, *, base: float = 30.0, per_unit: float = 0.05, cap: float = 300.0) -> float:
    """Seconds a case may take before it counts as hung, from its size.

    ``base`` covers torch's one-off lazy set-up on a cold rank and a noisy machine;
    each unit (a layer on a rank for one step, plus save and load) adds ``per_unit``.
    Measured cases of this size take 0.05-0.5 s, so the deadline is 60x or more. An optimizer whose cases are
    ``slow`` (torchao's low-bit AdamW) triples it.
    """
    units = len(case.model.linears()) * case.world_size * (case.steps + 2)
    return min(cap, (base + per_unit * units) * (3 if case.optimizer.slow else 1))


class MeasuredDeadlines:
    """``factor`` x the slowest of the last ``window`` finished cases, at least ``floor`` seconds, at most the
    generic deadline; the generic one until ``warmup`` cases have finished, and for the first ``cold`` cases
    after each start of the ranks."""

    def __init__(self, *, floor: float = 10.0, factor: float = 4.0, window: int = 200, warmup: int = 20, cold: int = 2):
        if floor <= 0 or factor < 1 or window < 1 or warmup < 1 or cold < 0:
            raise ValueError(
                f"MeasuredDeadlines(floor={floor}, factor={factor}, window={window}, warmup={warmup}, "
                f"cold={cold}): floor > 0, factor >= 1, window, warmup >= 1, cold >= 0"
            )
        self.floor, self.factor, self.warmup, self.cold = floor, factor, warmup, cold
        self._recent: deque[float] = deque(maxlen=window)
        self._since_start = 0

    def started(self) -> None:
        """The ranks were (re)started: their next cases pay torch's lazy set-up again."""
        self._since_start = 0

    def record(self, seconds: float) -> None:
        """A case finished (passed or failed without hanging) in ``seconds``."""
        self._recent.append(seconds)
        self._since_start += 1

    def deadline(self, generic: float) -> float:
        if len(self._recent) < self.warmup or self._since_start < self.cold:
            return generic
        return min(generic, max(self.floor, self.factor * max(self._recent)))
