"""The greedy descent after Hypothesis's shrink: from a finding's case to a one-step-simpler one, while it fails alike.

Hypothesis shrinks the choices it drew, and some simplifications of a case (a leaf dropped, fewer ranks, a
simpler engine) are many choices away; ``shrink.shrink_case`` takes those steps on the case itself,
keeping only cases that fail with the same signature and are not a known bug's.
"""

from __future__ import annotations

from shardfuzz.case import Case
from shardfuzz.executor.stop import StopRequested
from shardfuzz.findings.campaign_result import CampaignResult, CaseFailed
from shardfuzz.search.host import CampaignHost
from shardfuzz.search.shrink import shrink_case
from shardfuzz.verdict import Verdict

__all__ = ["polished"]


def polished(
    failure: CaseFailed, host: CampaignHost, result: CampaignResult, budget: float, verdicts: dict[Case, Verdict]
) -> tuple[CaseFailed, bool]:
    """``failure`` after a greedy descent from its case (``budget`` seconds at most), and whether the descent
    finished (no one-step-simpler case fails the same way). The cases it runs go through ``host.run_case`` and
    are recorded in ``result``; ``verdicts`` holds the cases already run (the round's), which are not run again."""
    if budget <= 0:
        return failure, False
    signature = failure.verdict.signature()

    def still_fails(case: Case) -> bool:
        if case not in verdicts:
            verdicts[case] = host.run_case(case)
            result.record(case, verdicts[case])
        verdict = verdicts[case]
        return verdict.is_failure and verdict.signature() == signature and not host.is_known(signature, case)

    try:
        outcome = shrink_case(failure.case, still_fails, budget=budget)
    except StopRequested:  # a case of the descent outran the budget's end (or a stop): keep the failure as it is
        return failure, False
    if outcome.case == failure.case:
        return failure, outcome.finished
    smaller = type(failure)(outcome.case, verdicts[outcome.case])
    smaller.from_database, smaller.seconds = failure.from_database, failure.seconds
    return smaller, outcome.finished
