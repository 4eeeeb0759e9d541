"""The Hypothesis-driven loop: draw a Case, run it on the pool, shrink failures, keep the results.

A campaign runs rounds of a ``@given`` test, each with a fresh seed, until the
budget is spent. Inside the test a failure whose signature is new raises an
exception of a class made for that signature, so Hypothesis shrinks each
distinct failure separately instead of slipping from one bug to another.
Failures already known (from the corpus, or shrunk earlier in this campaign)
are counted and let pass, so one common bug cannot eat the whole budget.

With an example ``database`` the first round replays what it holds before
drawing anything new: failures an earlier (or another machine's) campaign
saved come back first. A ``StopRequested`` raised by ``should_stop`` or by the
runner ends the campaign at once; failures still being shrunk are kept as they
stand (``Finding.shrunk`` False), so nothing found is lost.
"""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from typing import cast

import attrs
from hypothesis import HealthCheck, Phase, Verbosity, event, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import Flaky

from shardfuzz.case import Case, dimensions
from shardfuzz.steering import Steering
from shardfuzz.stop import StopRequested
from shardfuzz.strategies import cases
from shardfuzz.verdict import Verdict

__all__ = ["CaseFailed", "CampaignResult", "Finding", "TIME_CATEGORIES", "run_campaign", "label", "database_key"]


class CaseFailed(AssertionError):
    """A round-trip that did not pass; ``case`` and ``verdict`` say which and how."""

    def __init__(self, case: Case, verdict: Verdict):
        super().__init__(verdict.summary())
        self.case = case
        self.verdict = verdict
        self.from_database = False  # first seen replaying the example database
        self.seconds = 0.0  # from the campaign's start to its first failing case


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
    shrunk: bool = True  # False: the campaign stopped, or its budget ran out, while Hypothesis was shrinking it
    shrink_cases: int = 0  # cases run from its first failure to the end of its round (its shrink)
    shrink_seconds: float = 0.0
    from_database: bool = False  # first seen replaying the example database, not drawn new
    seconds: float = 0.0  # from the campaign's start to this failure's first case

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
    findings: dict[str, Finding] = attrs.Factory(dict)
    known_hits: Counter = attrs.Factory(Counter)
    known_seconds: dict[str, float] = attrs.Factory(_seconds)  # known signature -> wall seconds its hits cost
    unsupported: Counter = attrs.Factory(Counter)  # signature -> cases torch rejected as documented
    coverage: dict[str, Counter] = attrs.Factory(lambda: defaultdict(Counter))
    seconds_in_cases: float = 0.0
    wall_seconds: float = 0.0
    rounds: int = 0
    first_failure_seconds: float | None = None  # from the start to the first new failing case
    unchanged_keys: Counter = attrs.Factory(Counter)  # non-vacuity: key pattern -> cases it was unchanged in
    replayed_from_database: int = 0  # examples the first round found in the database
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
    _recent: list[tuple[float, str]] = attrs.Factory(list)

    def record(self, case: Case, verdict: Verdict) -> None:
        self.cases_run += 1
        self.statuses[verdict.status] += 1
        self.passed += verdict.ok
        self.seconds_in_cases += verdict.seconds
        for key in verdict.unchanged:
            self.unchanged_keys[_pattern(key)] += 1
        for name, value in dimensions(case).items():
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


#: The share of a round's shrink budget Hypothesis may use before the greedy descent takes over.
HYPOTHESIS_SHRINK_SHARE = 0.6

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
}


def _time_category(verdict: Verdict, known: bool) -> str:
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


def database_key(*parts: object) -> bytes:
    """The example database key of a campaign: stable across shardfuzz edits, distinct per strategy.

    Hypothesis keys a test's examples by a digest of its source; a campaign's
    test is redefined each round and its source changes between releases, so
    resuming (or sharing across machines) needs a key of our own. Examples drawn
    for another pool size or target would replay as other cases: the key names them.
    """
    return ("shardfuzz-campaign:v1:" + ":".join(map(str, parts))).encode()


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
    database=None,
    database_key: bytes = b"shardfuzz-campaign",
    should_stop: Callable[[], str | bool | None] = lambda: None,
    max_cases: int | None = None,
    devices: tuple[str, ...] = ("cpu",),
    vary_storage: bool = True,
    steer_after: int | None = None,
    known_dimensions: Callable[[str, Case], dict[str, str] | None] = lambda signature, case: None,
    expected: Mapping[str, Mapping[str, str]] | None = None,
    polish: bool = True,
) -> CampaignResult:
    """Fuzz until ``budget`` seconds are spent; return what was run and found.

    ``confirm`` re-runs the first case of each new failure signature (on a fresh
    pool, say); if it does not fail the same way, the failure is recorded as a
    flaky finding with both outcomes and is not shrunk.

    ``shrink_budget`` (default: half the budget, at least 30 s) caps the time one
    round spends shrinking, and the budget's end caps it too; past either, the round
    ends at once with the smallest failing case of each new failure found so far,
    and those findings are marked ``shrunk=False`` (``shardfuzz shrink`` goes on
    from there).
    ``stop_on_finding`` ends the campaign after the round that shrank its first finding.
    ``database`` (a Hypothesis ``ExampleDatabase``) under ``database_key`` keeps
    failing examples across campaigns; the first round replays them first.
    ``should_stop`` is polled before each case (a truthy answer, the reason, stops it); ``max_cases`` ends the campaign
    after that many cases (a fixed amount of work, for tests and comparisons), not
    counting the database's examples, which are always replayed. ``devices`` are those
    a side may be drawn on (see ``strategies.cases``); ``vary_storage=False`` for a
    user's target, which does its own I/O.

    ``polish``: once Hypothesis has finished shrinking a finding, or used its share of the
    shrink budget (``HYPOTHESIS_SHRINK_SHARE``), a greedy descent over
    one-step-simpler cases (``shrink.shrink_case``: a leaf dropped, fewer ranks, a simpler
    engine) goes on from its case with what is left of the shrink budget, keeping only
    cases that fail with the same signature; Hypothesis shrinks the choices it drew, and
    some simplifications of a case are many choices away. The finding is ``shrunk`` when that
    descent finished (no one-step-simpler case fails the same way: the test ``shardfuzz
    shrink`` uses too), whether Hypothesis finished or was cut at its share.

    ``steer_after=K`` spends the budget on the unknown: once a known bug has been hit K
    times (once, for a hang or a crash), draws like its hits are filtered out
    (``shardfuzz.steering``: the fewest dimension values its hits share that set them apart
    from the other cases run; one masked draw in ten still runs, to check the mask).
    ``result.steering`` holds the masks, ``result.masked`` and ``result.probes`` count what
    they did. ``known_dimensions(signature, case)`` may give the dimensions of the known
    bug's own (shrunk) case: only values its hits share with it are candidates. ``expected``
    masks known bugs from the first draw (signature -> conditions): those whose every hit
    costs a restart, under the conditions their corpus entries record.
    """
    result = CampaignResult()
    rng = random.Random(seed)
    started = result.started
    deadline = started + budget
    shrink_budget = max(30.0, budget / 2) if shrink_budget is None else shrink_budget
    # Hypothesis shrinks the choices it drew; the greedy descent shrinks the case itself, in steps that can be
    # many choices apart. Past its share, Hypothesis stops and the descent goes on from its smallest case.
    hypothesis_shrink = shrink_budget * (HYPOTHESIS_SHRINK_SHARE if polish else 1.0)
    all_cases = cases(max_world_size=max_world_size, devices=devices, vary_storage=vary_storage)
    confirmed: set[str] = set()  # signatures whose first failure was re-run by ``confirm``
    steering = None
    if steer_after is not None:
        steering = Steering(after=steer_after, own_case=known_dimensions)
        for signature, conditions in (expected or {}).items():
            steering.expect(signature, conditions)
        # The result shows the masks as they stand, and what they did.
        result.steering, result.masked, result.probes = steering.masks, steering.masked, steering.probes
    strategy = all_cases if steering is None else all_cases.filter(steering.wanted)
    # The time category (and known signature) of the last case, whose failure may leave ranks to restart.
    restart_owed_to: list[tuple[str, str | None]] = [("pool", None)]

    def out_of_work() -> bool:
        return time.monotonic() >= deadline or (max_cases is not None and result.cases_run >= max_cases)

    while not out_of_work():
        result.rounds += 1
        replay = database is not None and result.rounds == 1
        if replay:
            result.replayed_from_database = sum(1 for _ in database.fetch(database_key))
        executions = [0]
        shrinking = result.shrinking = {}  # signature -> the smallest failure raised so far this round
        # Size the round to the time left, so that few examples are drawn only to be
        # rejected at the deadline (drawing a case is not free).
        mean_case = result.seconds_in_cases / result.cases_run if result.cases_run else 0.5
        examples = max(1, min(round_size, int((deadline - time.monotonic()) / max(mean_case, 1e-3))))
        failing: dict[Case, CaseFailed] = {}
        verdicts: dict[Case, Verdict] = {}  # every case this round ran: the polish need not run one again
        first_failure: list[float] = []
        cases_at_first_failure = [0]
        cut_short = [False]  # a shrink ended by the shrink budget or the campaign's, not by Hypothesis

        if max_cases is not None:
            examples = max(1, min(examples, max_cases - result.cases_run))
        if replay:
            examples += result.replayed_from_database  # Hypothesis counts replays against max_examples

        if steering is not None:
            steering.frozen = False
            steering.update()

        @settings(
            database=database,
            max_examples=examples,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=((Phase.reuse,) if replay else ()) + (Phase.generate, Phase.shrink),
            report_multiple_bugs=True,
            verbosity=Verbosity.quiet,
            print_blob=False,
        )
        @hypothesis_seed(rng.getrandbits(64))
        @given(strategy)
        def round_of_cases(case: Case) -> None:
            reason = should_stop()
            if reason:
                if case in failing:  # Hypothesis replaying a failure to report it: fail as before, without running
                    raise failing[case]
                raise StopRequested(reason if isinstance(reason, str) else "stopped")
            now = time.monotonic()
            executions[0] += 1
            replaying = replay and executions[0] <= result.replayed_from_database
            if not first_failure and not replaying and out_of_work():
                return  # budget spent: the round's remaining draws pass without running (cheaper than reject())
            if first_failure and (now - first_failure[0] > hypothesis_shrink or now >= deadline):
                cut_short[0] = True
                raise _ShrinkCut("the shrink budget is spent")  # at once: Hypothesis would go on drawing for seconds
            label(case)
            verdict = verdicts[case] = run_case(case)
            spent = time.monotonic() - now
            result.record(case, verdict)
            signature = verdict.signature()
            known = verdict.is_failure and is_known(signature, case)
            category = _time_category(verdict, known)
            result.time_spent[category] += verdict.seconds
            # The time around a case is the pool's, but the ranks restarted after a hang or a crash (and the
            # process group re-formed after an error) are the failure's: the case after it pays for them.
            owed, around = restart_owed_to[0], max(0.0, spent - verdict.seconds)
            result.time_spent[owed[0]] += around
            if owed[1]:
                result.known_seconds[owed[1]] += around
            restart_owed_to[0] = (
                "pool" if category in ("passing cases", "unsupported") else category,
                signature if known else None,
            )
            if known:
                result.known_seconds[signature] += verdict.seconds
            if steering is not None:  # a combination torch refuses is as known as a known bug, and as useless again
                repeat = known or verdict.status == "unsupported"
                steering.observe(case, signature if repeat else None, costly=verdict.leaves_ranks_stuck)
            if on_case is not None:
                on_case(result, case, verdict)
            if verdict.ok:
                return
            if verdict.status == "unsupported":
                result.unsupported[signature] += 1
                event("unsupported combination")
                return
            if known:
                result.known_hits[signature] += 1
                event(f"known failure: {signature[:60]}")
                return
            if signature in result.findings:
                result.findings[signature].hits += 1
                return
            if confirm is not None and signature not in confirmed:
                result.confirming = True
                before = time.monotonic()
                try:
                    again = confirm(case)
                finally:
                    result.confirming = False
                result.time_spent["new failures"] += time.monotonic() - before
                result.record(case, again)
                confirmed.add(signature)
                if again.signature() != signature:
                    _add(result, Finding(case, verdict, flaky=True, other=again), on_finding)
                    return
            if result.first_failure_seconds is None:
                result.first_failure_seconds = now - started
            if not first_failure:
                first_failure.append(now)
                if steering is not None:
                    steering.frozen = True  # Hypothesis shrinks it against this round's strategy as it stands
                cases_at_first_failure[0] = result.cases_run
            failure = failure_for(case, verdict)
            failure.from_database = replaying
            failure.seconds = now - started
            if signature in shrinking:  # keep where it was first seen
                failure.from_database = shrinking[signature].from_database
                failure.seconds = shrinking[signature].seconds
            shrinking[signature] = failing[case] = failure
            raise failure

        def finding(failure: CaseFailed, cut: bool = False, **extra) -> Finding:
            """``cut``: Hypothesis's shrink was cut at its share of the shrink budget; the descent goes on."""
            shrunk = extra.pop("shrunk", not cut_short[0])
            if polish and (shrunk or cut) and not extra.get("flaky") and first_failure:
                left = min(first_failure[0] + shrink_budget, deadline) - time.monotonic()
                failure, shrunk = _polished(failure, run_case, result, left, is_known, verdicts)
            shrink = {
                "shrink_cases": result.cases_run - cases_at_first_failure[0],
                "shrink_seconds": round(time.monotonic() - first_failure[0], 2) if first_failure else 0.0,
            }
            return _finding(failure, **{"shrunk": shrunk, **shrink, **extra})

        if database is not None:
            round_of_cases._hypothesis_internal_database_key = database_key  # type: ignore[attr-defined]  # see database_key()
        try:
            round_of_cases()
        except _ShrinkCut:
            for failure in shrinking.values():  # cut short: the descent goes on from the smallest seen so far
                _add(result, finding(failure, cut=True, shrunk=False), on_finding)
        except StopRequested as exc:
            for failure in shrinking.values():  # stopped mid-shrink: keep the smallest seen so far
                _add(result, finding(failure, shrunk=False), on_finding)
            result.stopped = _why(should_stop(), exc)
            break
        except Flaky as exc:
            for failure in _failures(exc):
                _add(result, finding(failure, flaky=True), on_finding)
        except BaseException as exc:
            failures = _failures(exc)
            stopped = _stop_in(exc)
            if not failures and stopped is None:
                raise
            for failure in failures:
                _add(result, finding(failure), on_finding)
            if stopped is not None:  # stopped (or cut short) while Hypothesis was finishing the round
                for failure in shrinking.values():
                    _add(result, finding(failure, cut=isinstance(stopped, _ShrinkCut), shrunk=False), on_finding)
                if not isinstance(stopped, _ShrinkCut):
                    result.stopped = _why(should_stop(), stopped)
                    break
        finally:
            result.shrinking = {}
        if stop_on_finding and result.findings:
            result.stopped = "finding"
            break
    if not result.stopped:
        result.stopped = "max-cases" if max_cases is not None and result.cases_run >= max_cases else "budget"
    result.wall_seconds = time.monotonic() - started
    result.sample()
    return result


def _polished(
    failure: CaseFailed, run_case, result: CampaignResult, budget: float, is_known, verdicts: dict[Case, Verdict]
):
    """``failure`` after a greedy descent from its case (``budget`` seconds at most), and whether it finished.
    ``verdicts`` holds the cases already run (this round's), which are not run again."""
    from shardfuzz.shrink import shrink_case

    if budget <= 0:
        return failure, False
    signature = failure.verdict.signature()

    def still_fails(case: Case) -> bool:
        if case not in verdicts:
            verdicts[case] = run_case(case)
            result.record(case, verdicts[case])
        verdict = verdicts[case]
        return verdict.is_failure and verdict.signature() == signature and not is_known(signature, case)

    outcome = shrink_case(failure.case, still_fails, budget=budget)
    if outcome.case == failure.case:
        return failure, outcome.finished
    polished = type(failure)(outcome.case, verdicts[outcome.case])
    polished.from_database, polished.seconds = failure.from_database, failure.seconds
    return polished, outcome.finished


def _finding(failure: CaseFailed, **extra) -> Finding:
    return Finding(failure.case, failure.verdict, from_database=failure.from_database, seconds=failure.seconds, **extra)


def _pattern(key: str) -> str:
    from shardfuzz.verdict import _key_pattern

    return _key_pattern(key)


def _add(result: CampaignResult, finding: Finding, on_finding) -> None:
    if finding.signature not in result.findings:
        result.findings[finding.signature] = finding
        if on_finding is not None:
            on_finding(finding)


class _ShrinkCut(StopRequested):
    """A round's shrink budget (or the campaign's) ran out: the round ends, its failures are kept as small
    as they got (``shrunk=False``), and the campaign goes on while it has budget."""


def _why(reason, exc: StopRequested) -> str:
    """The stop's reason as the caller gave it (a signal's name), else the exception's words."""
    return reason if isinstance(reason, str) and reason else (str(exc) or "stopped")


def _stop_in(exc: BaseException) -> StopRequested | None:
    """The ``StopRequested`` in ``exc`` or in a group Hypothesis made of it, if any."""
    if isinstance(exc, StopRequested):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        found = _stop_in(inner)
        if found is not None:
            return found
    return None


def _failures(exc: BaseException) -> list[CaseFailed]:
    if isinstance(exc, CaseFailed):
        return [exc]
    found: list[CaseFailed] = []
    for inner in getattr(exc, "exceptions", ()):
        found.extend(_failures(inner))
    return found
