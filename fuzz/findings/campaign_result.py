"""What a campaign holds while it runs and hands back: its findings, counts, coverage, and where the time went.

Plain data the campaign fills in and the reports read (``report.campaign_report``); no Hypothesis here.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import cast

import attrs

from shardfuzz.case import Case, dimensions
from shardfuzz.executor.referee import is_refereed
from shardfuzz.verdict import Verdict

__all__ = [
    "CampaignResult",
    "CaseFailed",
    "Finding",
    "TIME_CATEGORIES",
    "UNFINISHED",
    "through_target",
    "time_category",
]


class CaseFailed(AssertionError):
    """A round-trip that did not pass; ``case`` and ``verdict`` say which and how."""

    def __init__(self, case: Case, verdict: Verdict):
        super().__init__(verdict.summary())
        self.case = case
        self.verdict = verdict
        self.from_database = False  # first seen replaying the example database
        self.seconds = 0.0  # from the campaign's start to its first failing case


@attrs.define
class Finding:
    """A distinct failure. ``flaky``: re-running it on a fresh pool gave ``other`` instead."""

    case: Case
    verdict: Verdict
    hits: int = 1
    flaky: bool = False
    other: Verdict | None = None
    shrunk: bool = True  # False: the campaign stopped, or its budget ran out, while Hypothesis was shrinking it
    shrink_cases: int = 0  # cases run from its first failure to the end of its round (its shrink)
    shrink_seconds: float = 0.0
    from_database: bool = False  # first seen replaying the example database, not drawn new
    seconds: float = 0.0  # from the campaign's start to this failure's first case
    # Phases that did not finish for it (``UNFINISHED``): the budget's end or a stop cut them; it is kept all the same.
    unfinished: tuple[str, ...] = ()

    @property
    def signature(self) -> str:
        return self.verdict.signature()


def _seconds() -> dict[str, float]:
    """Seconds by name: a Counter, so that a name never counted reads 0."""
    return cast("dict[str, float]", Counter())


@attrs.define
class CampaignResult:
    cases_run: int = 0
    passed: int = 0
    refereed: int = 0  # passes whose float32 run differed within rounding (``executor.referee``)
    findings: dict[str, Finding] = attrs.Factory(dict)
    known_hits: Counter = attrs.Factory(Counter)
    known_seconds: dict[str, float] = attrs.Factory(_seconds)  # known signature -> wall seconds its hits cost
    # Known signature -> its hits that no mask of its bug covered (not probes: where steering missed it), and
    # the last such hit's dimensions and seconds (what a mask would have to cover).
    known_unmasked: Counter = attrs.Factory(Counter)
    known_unmasked_example: dict[str, dict] = attrs.Factory(dict)
    unsupported: Counter = attrs.Factory(Counter)  # signature -> cases torch rejected as documented
    coverage: dict[str, Counter] = attrs.Factory(lambda: defaultdict(Counter))
    seconds_in_cases: float = 0.0
    wall_seconds: float = 0.0
    rounds: int = 0
    first_failure_seconds: float | None = None  # from the start to the first new failing case
    unchanged_keys: Counter = attrs.Factory(Counter)  # non-vacuity: key pattern -> cases it was unchanged in
    replayed_from_database: int = 0  # examples the first round found in the database
    # Cases run after a new failure in their round: Hypothesis shrinking it (and drawing on a while, unsteered), so
    # not drawn by the steered filter; what is left of ``cases_run`` is what steering chose.
    cases_after_failure: int = 0
    rounds_filtered_out: int = 0  # rounds whose every draw the filters passed over (the next draws unfiltered)
    stopped: str = ""  # why it ended: "budget", "max-cases", "finding", or the signal's name
    started: float = attrs.Factory(time.monotonic)
    timeline: list[dict] = attrs.Factory(list)  # samples over time, for the report's plots
    slowest_recent: tuple[float, str] = (0.0, "")  # (seconds, case summary) over the last 100 cases
    shrinking: dict[str, CaseFailed] = attrs.Factory(dict)  # this round's new signatures being shrunk -> smallest
    # Wall seconds by what they went to (TIME_CATEGORIES); the rest of the wall time is drawing and Hypothesis.
    time_spent: dict[str, float] = attrs.Factory(_seconds)
    statuses: Counter = attrs.Factory(Counter)  # cases by verdict status (pass, mismatch, error, crash, hang, ...)
    steering: dict[str, dict[str, str]] = attrs.Factory(dict)  # known signature -> the conditions it is masked by
    masked: Counter = attrs.Factory(Counter)  # known signature -> draws filtered out by its mask
    probes: Counter = attrs.Factory(Counter)  # known signature -> draws its mask let through to check itself
    confirming: bool = False  # re-running a new failure on a fresh pool
    pairwise: dict = attrs.Factory(dict)  # pairs of dimension values reached and drawn (search.pairs.PairSteering)
    reached_pairs: set = attrs.Factory(set)  # the pairs themselves, for ``shardfuzz run --pairs FILE``
    _recent: list[tuple[float, str]] = attrs.Factory(list)

    def record(self, case: Case, verdict: Verdict) -> None:
        self.cases_run += 1
        self.statuses[verdict.status] += 1
        self.passed += verdict.ok
        self.refereed += is_refereed(verdict)
        self.seconds_in_cases += verdict.seconds
        for key in verdict.unchanged:
            self.unchanged_keys[_pattern(key)] += 1
        for name, value in dimensions(case).items():
            self.coverage[name][value] += 1
        for name, value in through_target(case, verdict).items():
            self.coverage[name][value] += 1
        self._recent = self._recent[-99:] + [(verdict.seconds, _brief(case))]
        self.slowest_recent = max(self._recent)
        now = time.monotonic()
        if not self.timeline or now - self.started - self.timeline[-1]["t"] >= _sample_interval(now - self.started):
            self.sample(now)

    def sample(self, now: float | None = None) -> None:
        """Append a point to ``timeline``: cumulative counts at this moment."""
        elapsed = (time.monotonic() if now is None else now) - self.started
        self.timeline.append(
            {
                "t": round(elapsed, 2),
                "cases": self.cases_run,
                "passed": self.passed,
                "findings": dict(Counter(f.verdict.triage for f in self.findings.values())),
                "known_hits": sum(self.known_hits.values()),
                "unsupported": sum(self.unsupported.values()),
                "coverage": {name: len(values) for name, values in self.coverage.items()},
                "hangs": self.statuses["hang"],
                "crashes": self.statuses["crash"],
                "shrinking": len(self.shrinking),
                "pool_seconds": round(self.time_spent["pool"], 2),
            }
        )

    @property
    def activity(self) -> str:
        """What the campaign is doing now, in words for the progress line."""
        if self.confirming:
            return "confirming a new failure"
        if self.shrinking:
            n = len(self.shrinking)
            return f"shrinking {n} new failure{'s' if n > 1 else ''}"
        return "drawing"

    def findings_by_class(self) -> Counter:
        return Counter(f.verdict.triage for f in self.findings.values())


#: Where a campaign's wall time goes, as ``CampaignResult.time_spent`` counts it.
TIME_CATEGORIES = {
    "passing cases": "cases that passed",
    "new failures": "failing cases of new bugs: finding, confirming and shrinking them",
    "known repeats": "cases that hit a known bug again (its hangs and crashes too)",
    "unsupported": "cases torch refused as documented-unsupported",
    "hangs": "cases that outran their deadline, not a known bug's",
    "crashes": "cases in which a rank died, not a known bug's",
    "pool": "starting ranks, sending cases (the time around each case; restarts after a failure count as "
    "the failure's)",
    "findings": "keeping each new finding: saving it and explaining it (running its neighbours)",
}

#: Phases of a finding that the budget's end or a stop may cut, each with the command that finishes it.
UNFINISHED = {
    "confirmation": "shardfuzz replay {path} --repeat 2",
    "shrink": "shardfuzz shrink {path}",
    "explanation": "shardfuzz explain {path}",
}


def time_category(verdict: Verdict, known: bool) -> str:
    if known:  # a known bug's hang or crash too: what steering is for
        return "known repeats"
    if verdict.status in ("hang", "crash"):
        return "hangs" if verdict.status == "hang" else "crashes"
    return {"pass": "passing cases", "unsupported": "unsupported"}.get(verdict.status, "new failures")


def _sample_interval(elapsed: float) -> float:
    """Every 2 s at first, then ever sparser: a few hundred points for any length of run."""
    return max(2.0, elapsed / 200)


def _brief(case: Case) -> str:
    d = dimensions(case)
    return (
        f"{d['save_engine']}{case.save.mesh_shape}->{d['load_engine']}{case.load.mesh_shape} "
        f"{d['optimizer']} {d['linears']} linears, {case.steps} steps"
    )


def _pattern(key: str) -> str:
    from shardfuzz.verdict import _key_pattern

    return _key_pattern(key)


#: The round-trip's phases (``roundtrip.run_case``) before the target's save, and before its load.
_BEFORE_SAVE = frozenset({"build-save", "train", "gather-saved"})
_BEFORE_LOAD = _BEFORE_SAVE | {
    *("save", "continue-saved", "api-parity", "finish-save", "barrier", "idle", "build-load", "gather-before-load")
}


def through_target(case: Case, verdict: Verdict) -> dict[str, str]:
    """Which engine and state-dict type went through the target's own save and load code in this
    case (``through_save``/``through_load``: ``"fsdp2 sharded"``): a side whose case failed before
    its call, or was never run, did not. For a framework's target, the report's coverage of these two
    dimensions is what its checkpoint API was actually put through."""
    if verdict.status == "unsupported":
        return {}
    phases = [error.phase for error in verdict.errors] + ([verdict.where] if verdict.where else [])
    reached_save = not phases or not any(phase in _BEFORE_SAVE for phase in phases)
    reached_load = not phases or not any(phase in _BEFORE_LOAD for phase in phases)
    through = {}
    if reached_save:
        through["through_save"] = f"{type(case.save.engine).__name__.lower()} {case.save.state_dict}"
    if reached_load:
        through["through_load"] = f"{type(case.load.engine).__name__.lower()} {case.load.state_dict}"
    return through
