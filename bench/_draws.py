"""A fixed draw of cases for the bench scripts: the same seed gives the same cases, run after run."""

from __future__ import annotations

from collections.abc import Callable


def for_each_drawn_case(strategy, *, examples: int, seed: int, run: Callable[[object], None]) -> None:
    """Call ``run(case)`` on ``examples`` cases drawn from ``strategy`` with Hypothesis seed ``seed``:
    generation only (no shrinking, no example database), so the draws depend on the seed alone."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    @settings(
        max_examples=examples,
        phases=[Phase.generate],
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis_seed(seed)
    @given(strategy)
    def draw(case) -> None:
        run(case)

    draw()
