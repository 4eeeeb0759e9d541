"""The Hypothesis-driven loop: draw a Case, run it on the pool, shrink failures, keep the results.

A campaign runs rounds of a ``@given`` test, each with a fresh seed, until the
budget is spent. Inside the test a failure whose signature is new raises an
exception of a class made for that signature, so Hypothesis shrinks each
distinct failure separately instead of slipping from one bug to another.
Failures already known (from the corpus, or shrunk earlier in this campaign)
are counted and let pass, so one common bug cannot eat the whole budget.
"""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable

import attrs
from hypothesis import HealthCheck, Phase, Verbosity, event, given, reject, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import Flaky, Unsatisfiable

from shardfuzz.case import Case, dimensions
from shardfuzz.strategies import cases
from shardfuzz.verdict import Verdict

__all__ = ["CaseFailed", "CampaignResult", "Finding", "run_campaign", "label"]


class CaseFailed(AssertionError):
    """A round-trip that did not pass; ``case`` and ``verdict`` say which and how."""

    def __init__(self, case: Case, verdict: Verdict):
        super().__init__(verdict.summary())
        self.case = case
        self.verdict = verdict


_FAILURE_CLASSES: dict[str, type[CaseFailed]] = {}


def failure_for(case: Case, verdict: Verdict) -> CaseFailed:
    """A ``CaseFailed`` whose class is unique to the verdict's signature (Hypothesis tracks bugs by type)."""
    signature = verdict.signature()
    cls = _FAILURE_CLASSES.get(signature)
    if cls is None:
        cls = type(f"CaseFailed{len(_FAILURE_CLASSES)}", (CaseFailed,), {"__module__": __name__})
        _FAILURE_CLASSES[signature] = cls
    return cls(case, verdict)


def label(case: Case) -> None:
    """Label every dimension with ``hypothesis.event`` (``--hypothesis-show-statistics``)."""
    for name, value in dimensions(case).items():
        event(f"{name}={value}")


@attrs.define
class Finding:
    """A distinct failure. ``flaky``: re-running it on a fresh pool gave ``other`` instead."""

    case: Case
    verdict: Verdict
    hits: int = 1
    flaky: bool = False
    other: Verdict | None = None

    @property
    def signature(self) -> str:
        return self.verdict.signature()


@attrs.define
class CampaignResult:
    cases_run: int = 0
    passed: int = 0
    findings: dict[str, Finding] = attrs.Factory(dict)
    known_hits: Counter = attrs.Factory(Counter)
    unsupported: Counter = attrs.Factory(Counter)  # signature -> cases torch rejected as documented
    coverage: dict[str, Counter] = attrs.Factory(lambda: defaultdict(Counter))
    seconds_in_cases: float = 0.0
    wall_seconds: float = 0.0
    rounds: int = 0
    first_failure_seconds: float | None = None  # from the start to the first new failing case
    unchanged_keys: Counter = attrs.Factory(Counter)  # non-vacuity: key pattern -> cases it was unchanged in

    def record(self, case: Case, verdict: Verdict) -> None:
        self.cases_run += 1
        self.passed += verdict.ok
        self.seconds_in_cases += verdict.seconds
        for key in verdict.unchanged:
            self.unchanged_keys[_pattern(key)] += 1
        for name, value in dimensions(case).items():
            self.coverage[name][value] += 1


def run_campaign(
    run_case: Callable[[Case], Verdict],
    *,
    budget: float,
    seed: int | None = None,
    max_world_size: int = 4,
    is_known: Callable[[str, Case], bool] = lambda signature, case: False,
    on_case: Callable[[CampaignResult, Case, Verdict], None] | None = None,
    on_finding: Callable[[Finding], None] | None = None,
    round_size: int = 20,
    shrink_budget: float | None = None,
    confirm: Callable[[Case], Verdict] | None = None,
    stop_on_finding: bool = False,
) -> CampaignResult:
    """Fuzz until ``budget`` seconds are spent; return what was run and found.

    ``confirm`` re-runs the first case of each new failure signature (on a fresh
    pool, say); if it does not fail the same way, the failure is recorded as a
    flaky finding with both outcomes and is not shrunk.

    ``shrink_budget`` (default: half the budget, at least 30 s) caps the time one
    round spends shrinking; past it, only cases already seen failing are re-run,
    so Hypothesis finishes with the smallest failing case found so far.
    ``stop_on_finding`` ends the campaign after the round that shrank its first finding.
    """
    result = CampaignResult()
    rng = random.Random(seed)
    started = time.monotonic()
    deadline = started + budget
    shrink_budget = max(30.0, budget / 2) if shrink_budget is None else shrink_budget
    strategy = cases(max_world_size=max_world_size)
    confirmed: set[str] = set()  # signatures whose first failure was re-run by ``confirm``

    while time.monotonic() < deadline:
        result.rounds += 1
        # Size the round to the time left, so that few examples are drawn only to be
        # rejected at the deadline (drawing a case is not free).
        mean_case = result.seconds_in_cases / result.cases_run if result.cases_run else 0.5
        examples = max(1, min(round_size, int((deadline - time.monotonic()) / max(mean_case, 1e-3))))
        failing: set[Case] = set()
        first_failure: list[float] = []

        @settings(
            database=None,
            max_examples=examples,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=(Phase.generate, Phase.shrink),
            report_multiple_bugs=True,
            verbosity=Verbosity.quiet,
            print_blob=False,
        )
        @hypothesis_seed(rng.getrandbits(64))
        @given(strategy)
        def round_of_cases(case: Case) -> None:
            now = time.monotonic()
            if not first_failure and now >= deadline:
                reject()  # budget spent: let the round end without running more
            if first_failure and now - first_failure[0] > shrink_budget and case not in failing:
                return  # shrink budget spent: only known-failing cases still fail
            label(case)
            verdict = run_case(case)
            result.record(case, verdict)
            if on_case is not None:
                on_case(result, case, verdict)
            if verdict.ok:
                return
            if verdict.status == "unsupported":
                result.unsupported[verdict.signature()] += 1
                event("unsupported combination")
                return
            signature = verdict.signature()
            if is_known(signature, case):
                result.known_hits[signature] += 1
                event(f"known failure: {signature[:60]}")
                return
            if signature in result.findings:
                result.findings[signature].hits += 1
                return
            if confirm is not None and signature not in confirmed:
                again = confirm(case)
                result.record(case, again)
                confirmed.add(signature)
                if again.signature() != signature:
                    _add(result, Finding(case, verdict, flaky=True, other=again), on_finding)
                    return
            failing.add(case)
            if result.first_failure_seconds is None:
                result.first_failure_seconds = now - started
            if not first_failure:
                first_failure.append(now)
            raise failure_for(case, verdict)

        try:
            round_of_cases()
        except Unsatisfiable:
            pass  # every example of the round was rejected: the budget ran out
        except Flaky as exc:
            for failure in _failures(exc):
                _add(result, Finding(failure.case, failure.verdict, flaky=True), on_finding)
        except BaseException as exc:  # noqa: BLE001 - a group of CaseFailed, or a real error
            failures = _failures(exc)
            if not failures:
                raise
            for failure in failures:
                _add(result, Finding(failure.case, failure.verdict), on_finding)
        if stop_on_finding and result.findings:
            break
    result.wall_seconds = time.monotonic() - started
    return result


def _pattern(key: str) -> str:
    from shardfuzz.verdict import _key_pattern

    return _key_pattern(key)


def _add(result: CampaignResult, finding: Finding, on_finding) -> None:
    if finding.signature not in result.findings:
        result.findings[finding.signature] = finding
        if on_finding is not None:
            on_finding(finding)


def _failures(exc: BaseException) -> list[CaseFailed]:
    if isinstance(exc, CaseFailed):
        return [exc]
    found: list[CaseFailed] = []
    for inner in getattr(exc, "exceptions", ()):
        found.extend(_failures(inner))
    return found
