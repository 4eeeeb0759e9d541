"""Pairwise coverage: which pairs of values (two labelled dimensions' values met in one case) a campaign has run, and
steering toward those it has not.

Single values are not enough: a bug that needs a rowwise tensor-parallel save *and* a Linear with a bias stays rare
when each is common, and the classic finding of combinatorial testing is that most interaction faults need two or
three conditions at once. So a draw is run when it brings at least as many pairs not run yet as the draws before it
did on average (an exponential moving average over draws, ``BAR_WEIGHT``): about one draw in two, the more novel half.
A value run fewer than ``RARE`` times counts as ``RARE_WORTH`` new pairs, so steering toward pairs does not starve
single values; nor do the masks over known bugs (``Steering.wanted``), which let such a draw through. A draw below
the bar, or with nothing new at all, is passed over, except one in ``KEEP_EVERY`` (a stable function of the case, as
steering's probes are: Hypothesis sees the same answer when it draws the same case again), so the common values keep
coming too. Drawing costs milliseconds and a case a few hundred, so passing over a draw is cheap. While a
round shrinks a failure the filter is frozen open: a shrink's candidates are not new, and must not be passed over.

Which pairs can meet at all is not known in advance (the data model, the unsupported rules and the target's support
exclude many), and a run's own draws cannot tell: every draw with a pair not run yet is run. So a run counts the pairs
it ``reached``; ``bench/pairs_reference.py`` draws a large sample without running anything, the denominator a run's
``--pairs`` file is compared with.
"""

from __future__ import annotations

import itertools
import zlib
from collections import Counter
from collections.abc import Mapping

import attrs

from shardfuzz.case import Case, dimensions

__all__ = ["BAR_WEIGHT", "KEEP_EVERY", "RARE", "RARE_WORTH", "PairSteering", "pairs_of"]

#: One in this many draws below the bar is run anyway. Replayed offline over 6,000 draws (four orders), 4 left 3 to 7
#: values under ``RARE`` runs at 400 cases and 16 left 0 to 2, for about three draws a case instead of two.
KEEP_EVERY = 16
#: The weight of the newest draw in the moving average of new pairs per draw (the bar a draw must reach).
BAR_WEIGHT = 0.1
#: A value run fewer than this many times is rare, and a draw holding it worth ``RARE_WORTH`` new pairs.
RARE = 10
RARE_WORTH = 100


def pairs_of(values: Mapping[str, str]) -> set[tuple[str, str]]:
    """The value pairs of one case's dimensions: ``("dim=value", "dim=value")``, the two in name order."""
    named = sorted(f"{name}={value}" for name, value in values.items())
    return set(itertools.combinations(named, 2))


@attrs.define
class PairSteering:
    """The pairs a campaign has run, and the filter that passes over draws that bring no new pair."""

    keep_every: int = KEEP_EVERY
    reached: set = attrs.Factory(set)
    runs: Counter = attrs.Factory(Counter)  # "dim=value" -> cases run with it
    passed_over: int = 0  # draws filtered out for bringing fewer new pairs than the bar
    bar: float = 0.0  # the moving average of new pairs per draw
    frozen: bool = False  # while a round shrinks a new failure: every draw is wanted

    def rare_values(self, values: Mapping[str, str]) -> int:
        """How many of a case's dimension ``values`` were run fewer than ``RARE`` times."""
        return sum(1 for name, value in values.items() if self.runs[f"{name}={value}"] < RARE)

    def holds_rare(self, case: Case) -> bool:
        """Whether ``case`` holds a value run fewer than ``RARE`` times (steering's masks let such a draw through)."""
        return self.rare_values(dimensions(case)) > 0

    def wanted(self, case: Case) -> bool:
        """Whether to run ``case``: it brings at least the bar's count of pairs not run yet (and at least one), or it
        is one of the ``keep_every`` let through."""
        if self.frozen:
            return True
        values = dimensions(case)
        new = len(pairs_of(values) - self.reached) + RARE_WORTH * self.rare_values(values)
        bar, self.bar = self.bar, self.bar + BAR_WEIGHT * (new - self.bar)
        if new and new >= bar:
            return True
        if zlib.crc32(repr(case).encode()) % self.keep_every == 0:
            return True
        self.passed_over += 1
        return False

    def observe(self, case: Case) -> None:
        """``case`` was run: its pairs are reached, its values counted."""
        values = dimensions(case)
        self.reached |= pairs_of(values)
        self.runs.update(f"{name}={value}" for name, value in values.items())

    def summary(self) -> dict[str, int]:
        """Counts for reports: the pairs reached, and the draws passed over."""
        return {"reached": len(self.reached), "passed_over": self.passed_over}
