"""``shardfuzz selftest``: fuzz every mutant of the catalogue and report which the oracles kill.

For each mutant (``mutants.CATALOGUE``) a fresh pool runs a campaign with that
mutant as the checkpoint target until its first finding is shrunk or its time
budget runs out (``budget_per_mutant`` to find it, ``shrink_budget`` more to shrink it). Known torch bugs (from the corpus) are let pass, so a kill is
a failure that only the mutant causes. Per mutant: killed or survived, the
oracle (or error) that fired, seconds to the first failing case, the size of the
shrunk case, and whether its shrink finished and how long it took.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from attrs import asdict, frozen

from shardfuzz.campaign import run_campaign
from shardfuzz.case import Case
from shardfuzz.describe import describe
from shardfuzz.executor import RankPool
from shardfuzz.mutants import CATALOGUE
from shardfuzz.shrink import case_size

__all__ = ["MutantResult", "case_size", "describe", "run_selftest"]


@frozen
class MutantResult:
    mutant: str
    expected_oracle: str
    killed: bool
    killed_by: str
    seconds_to_detect: float | None
    shrunk_case_size: int | None
    shrunk_case: str
    cases_run: int
    seconds: float
    shrunk: bool | None = None  # the shrink finished (Hypothesis's, then the greedy descent); None: not killed
    shrink_seconds: float | None = None  # from the first failing case to the end of its shrink

    def as_dict(self) -> dict:
        return asdict(self)


def run_selftest(
    *,
    budget_per_mutant: float = 40.0,
    shrink_budget: float = 40.0,
    world_size: int = 2,
    seed: int = 0,
    mutants: list[str] | None = None,
    is_known: Callable[[str, Case], bool] = lambda signature, case: False,
    on_result: Callable[[MutantResult], None] | None = None,
) -> list[MutantResult]:
    names = mutants or list(CATALOGUE)
    unknown = sorted(set(names) - set(CATALOGUE))
    if unknown:
        raise ValueError(f"no such mutant(s) {unknown}; the catalogue has {sorted(CATALOGUE)}")
    results = []
    for name in names:
        started = time.monotonic()
        with RankPool(world_size, target=f"shardfuzz.mutants:{name}") as pool:
            campaign = run_campaign(
                pool.run,
                budget=budget_per_mutant + shrink_budget,  # finding it, then shrinking it
                seed=seed,
                max_world_size=world_size,
                is_known=is_known,
                stop_on_finding=True,
                vary_storage=False,
                shrink_budget=shrink_budget,
            )
        finding = min(campaign.findings.values(), key=lambda f: case_size(f.case), default=None)
        killed_by = ""
        if finding is not None:
            verdict = finding.verdict
            killed_by = verdict.mismatches[0].oracle if verdict.mismatches else verdict.signature()[:80]
        result = MutantResult(
            mutant=name,
            expected_oracle=CATALOGUE[name],
            killed=finding is not None,
            killed_by=killed_by,
            seconds_to_detect=None
            if campaign.first_failure_seconds is None
            else round(campaign.first_failure_seconds, 2),
            shrunk_case_size=case_size(finding.case) if finding else None,
            shrunk_case=describe(finding.case) if finding else "",
            cases_run=campaign.cases_run,
            seconds=round(time.monotonic() - started, 1),
            shrunk=finding.shrunk if finding else None,
            shrink_seconds=finding.shrink_seconds if finding else None,
        )
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results
