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
from collections.abc import Callable, Mapping

from hypothesis import HealthCheck, Phase, Verbosity, event, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import Flaky

from shardfuzz.case import Case, dimensions
from shardfuzz.executor.stop import StopRequested
from shardfuzz.findings.campaign_result import TIME_CATEGORIES, CampaignResult, CaseFailed, Finding, time_category
from shardfuzz.search.steering import Steering
from shardfuzz.strategies import cases
from shardfuzz.targets.support import TargetSupport
from shardfuzz.verdict import Verdict

__all__ = ["CaseFailed", "CampaignResult", "Finding", "TIME_CATEGORIES", "run_campaign", "label", "database_key"]


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


#: The share of a round's shrink budget Hypothesis may use before the greedy descent takes over.
HYPOTHESIS_SHRINK_SHARE = 0.6


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
    support: TargetSupport | None = None,
    steer_after: int | None = None,
    known_dimensions: Callable[[str, Case], dict[str, str] | None] = lambda signature, case: None,
    expected: Mapping[str, Mapping[str, str]] | None = None,
    polish: bool = True,
    model=None,
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
    user's target, which does its own I/O; ``support`` (the target's ``TargetSupport``) leaves
    undrawn the cases the target does not run.

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
    (``shardfuzz.search.steering``: the fewest dimension values its hits share that set them apart
    from the other cases run; one masked draw in ten still runs, to check the mask).
    ``result.steering`` holds the masks, ``result.masked`` and ``result.probes`` count what
    they did. ``known_dimensions(signature, case)`` may give the dimensions of the known
    bug's own (shrunk) case: only values its hits share with it are candidates. ``expected``
    masks known bugs from the first draw (signature -> conditions): those whose every hit
    costs a restart, under the conditions their corpus entries record.
    """
    return Campaign(
        run_case,
        budget=budget,
        seed=seed,
        max_world_size=max_world_size,
        is_known=is_known,
        on_case=on_case,
        on_finding=on_finding,
        round_size=round_size,
        shrink_budget=shrink_budget,
        confirm=confirm,
        stop_on_finding=stop_on_finding,
        database=database,
        database_key=database_key,
        should_stop=should_stop,
        max_cases=max_cases,
        devices=devices,
        vary_storage=vary_storage,
        support=support,
        steer_after=steer_after,
        known_dimensions=known_dimensions,
        expected=expected,
        polish=polish,
        model=model,
    ).run()


class Campaign:
    """One campaign (see ``run_campaign`` for what each setting does): rounds of Hypothesis examples until
    the budget or ``max_cases`` is spent, each round's new failures shrunk; ``run`` returns the result."""

    def __init__(
        self,
        run_case: Callable[[Case], Verdict],
        *,
        budget: float,
        seed: int | None,
        max_world_size: int,
        is_known: Callable[[str, Case], bool],
        on_case: Callable[[CampaignResult, Case, Verdict], None] | None,
        on_finding: Callable[[Finding], None] | None,
        round_size: int,
        shrink_budget: float | None,
        confirm: Callable[[Case], Verdict] | None,
        stop_on_finding: bool,
        database,
        database_key: bytes,
        should_stop: Callable[[], str | bool | None],
        max_cases: int | None,
        devices: tuple[str, ...],
        vary_storage: bool,
        support: TargetSupport | None,
        steer_after: int | None,
        known_dimensions: Callable[[str, Case], dict[str, str] | None],
        expected: Mapping[str, Mapping[str, str]] | None,
        polish: bool,
        model=None,
    ):
        self.run_case, self.is_known, self.on_case, self.on_finding = run_case, is_known, on_case, on_finding
        self.round_size, self.confirm, self.stop_on_finding = round_size, confirm, stop_on_finding
        self.database, self.database_key, self.should_stop = database, database_key, should_stop
        self.max_cases, self.polish = max_cases, polish
        self.result = CampaignResult()
        self.rng = random.Random(seed)
        self.started = self.result.started
        self.deadline = self.started + budget
        self.shrink_budget = max(30.0, budget / 2) if shrink_budget is None else shrink_budget
        # Hypothesis shrinks the choices it drew; the greedy descent shrinks the case itself, in steps that can be
        # many choices apart. Past its share, Hypothesis stops and the descent goes on from its smallest case.
        self.hypothesis_shrink = self.shrink_budget * (HYPOTHESIS_SHRINK_SHARE if polish else 1.0)
        all_cases = cases(
            max_world_size=max_world_size, devices=devices, vary_storage=vary_storage, support=support, model=model
        )
        self.confirmed: set[str] = set()  # signatures whose first failure was re-run by ``confirm``
        self.steering: Steering | None = None
        if steer_after is not None:
            self.steering = Steering(after=steer_after, own_case=known_dimensions)
            for signature, conditions in (expected or {}).items():
                self.steering.expect(signature, conditions)
            # The result shows the masks as they stand, and what they did.
            self.result.steering = self.steering.masks
            self.result.masked, self.result.probes = self.steering.masked, self.steering.probes
        self.strategy = all_cases if self.steering is None else all_cases.filter(self.steering.wanted)
        # The time category (and known signature) of the last case, whose failure may leave ranks to restart.
        self.restart_owed_to: tuple[str, str | None] = ("pool", None)

    def out_of_work(self) -> bool:
        return time.monotonic() >= self.deadline or (
            self.max_cases is not None and self.result.cases_run >= self.max_cases
        )

    def run(self) -> CampaignResult:
        result = self.result
        while not self.out_of_work():
            result.rounds += 1
            if not _Round(self).run():
                break
            if self.stop_on_finding and result.findings:
                result.stopped = "finding"
                break
        if not result.stopped:
            out_of_cases = self.max_cases is not None and result.cases_run >= self.max_cases
            result.stopped = "max-cases" if out_of_cases else "budget"
        result.wall_seconds = time.monotonic() - self.started
        result.sample()
        return result

    def account(self, case: Case, verdict: Verdict, spent: float) -> tuple[str, bool]:
        """Record a case's verdict and where its time went; its signature, and whether it is a known bug's."""
        result = self.result
        result.record(case, verdict)
        signature = verdict.signature()
        known = verdict.is_failure and self.is_known(signature, case)
        category = time_category(verdict, known)
        result.time_spent[category] += verdict.seconds
        # The time around a case is the pool's, but the ranks restarted after a hang or a crash (and the
        # process group re-formed after an error) are the failure's: the case after it pays for them.
        owed, around = self.restart_owed_to, max(0.0, spent - verdict.seconds)
        result.time_spent[owed[0]] += around
        if owed[1]:
            result.known_seconds[owed[1]] += around
        self.restart_owed_to = (
            "pool" if category in ("passing cases", "unsupported") else category,
            signature if known else None,
        )
        if known:
            result.known_seconds[signature] += verdict.seconds
        if self.steering is not None:  # a combination torch refuses is as known as a known bug, and as useless again
            repeat = known or verdict.status == "unsupported"
            self.steering.observe(case, signature if repeat else None, costly=verdict.leaves_ranks_stuck)
        return signature, known

    def flaky_on_confirmation(self, case: Case, verdict: Verdict, signature: str) -> bool:
        """Re-run the first case of a new signature with ``confirm``; True (and a flaky finding recorded) when
        it does not fail the same way again."""
        if self.confirm is None or signature in self.confirmed:
            return False
        result = self.result
        result.confirming = True
        before = time.monotonic()
        try:
            again = self.confirm(case)
        finally:
            result.confirming = False
        result.time_spent["new failures"] += time.monotonic() - before
        result.record(case, again)
        self.confirmed.add(signature)
        if again.signature() == signature:
            return False
        _add(result, Finding(case, verdict, flaky=True, other=again), self.on_finding)
        return True


class _Round:
    """One round of a campaign: Hypothesis draws up to ``examples`` cases, and shrinks the new failures."""

    def __init__(self, campaign: Campaign):
        self.campaign = campaign
        result = campaign.result
        self.replay = campaign.database is not None and result.rounds == 1
        if self.replay:
            result.replayed_from_database = sum(1 for _ in campaign.database.fetch(campaign.database_key))
        self.executions = 0
        self.shrinking: dict[str, CaseFailed] = {}  # signature -> the smallest failure raised so far this round
        result.shrinking = self.shrinking
        self.failing: dict[Case, CaseFailed] = {}
        self.verdicts: dict[Case, Verdict] = {}  # every case this round ran: the polish need not run one again
        self.first_failure: float | None = None
        self.cases_at_first_failure = 0
        self.cut_short = False  # a shrink ended by the shrink budget or the campaign's, not by Hypothesis
        # Size the round to the time left, so that few examples are drawn only to be
        # rejected at the deadline (drawing a case is not free).
        mean_case = result.seconds_in_cases / result.cases_run if result.cases_run else 0.5
        examples = max(1, min(campaign.round_size, int((campaign.deadline - time.monotonic()) / max(mean_case, 1e-3))))
        if campaign.max_cases is not None:
            examples = max(1, min(examples, campaign.max_cases - result.cases_run))
        if self.replay:
            examples += result.replayed_from_database  # Hypothesis counts replays against max_examples
        self.examples = examples

    def test(self, case: Case) -> None:
        """Hypothesis's test: run ``case``; raise ``CaseFailed`` for a new failure (Hypothesis then shrinks it)."""
        campaign, result = self.campaign, self.campaign.result
        reason = campaign.should_stop()
        if reason:
            if case in self.failing:  # Hypothesis replaying a failure to report it: fail as before, without running
                raise self.failing[case]
            raise StopRequested(reason if isinstance(reason, str) else "stopped")
        now = time.monotonic()
        self.executions += 1
        replaying = self.replay and self.executions <= result.replayed_from_database
        if self.first_failure is None and not replaying and campaign.out_of_work():
            return  # budget spent: the round's remaining draws pass without running (cheaper than reject())
        if self.first_failure is not None and (
            now - self.first_failure > campaign.hypothesis_shrink or now >= campaign.deadline
        ):
            self.cut_short = True
            raise _ShrinkCut("the shrink budget is spent")  # at once: Hypothesis would go on drawing for seconds
        label(case)
        verdict = self.verdicts[case] = campaign.run_case(case)
        signature, known = campaign.account(case, verdict, time.monotonic() - now)
        if campaign.on_case is not None:
            campaign.on_case(result, case, verdict)
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
        if campaign.flaky_on_confirmation(case, verdict, signature):
            return
        if result.first_failure_seconds is None:
            result.first_failure_seconds = now - campaign.started
        if self.first_failure is None:
            self.first_failure = now
            if campaign.steering is not None:
                campaign.steering.frozen = True  # Hypothesis shrinks it against this round's strategy as it stands
            self.cases_at_first_failure = result.cases_run
        failure = failure_for(case, verdict)
        failure.from_database = replaying
        failure.seconds = now - campaign.started
        if signature in self.shrinking:  # keep where it was first seen
            failure.from_database = self.shrinking[signature].from_database
            failure.seconds = self.shrinking[signature].seconds
        self.shrinking[signature] = self.failing[case] = failure
        raise failure

    def finding(self, failure: CaseFailed, cut: bool = False, **extra) -> Finding:
        """``cut``: Hypothesis's shrink was cut at its share of the shrink budget; the descent goes on."""
        campaign, result = self.campaign, self.campaign.result
        shrunk = extra.pop("shrunk", not self.cut_short)
        if campaign.polish and (shrunk or cut) and not extra.get("flaky") and self.first_failure is not None:
            left = min(self.first_failure + campaign.shrink_budget, campaign.deadline) - time.monotonic()
            failure, shrunk = _polished(failure, campaign.run_case, result, left, campaign.is_known, self.verdicts)
        shrink = {
            "shrink_cases": result.cases_run - self.cases_at_first_failure,
            "shrink_seconds": round(time.monotonic() - self.first_failure, 2)
            if self.first_failure is not None
            else 0.0,
        }
        return _finding(failure, **{"shrunk": shrunk, **shrink, **extra})

    def run(self) -> bool:
        """Run the round; False when the campaign was asked to stop (``result.stopped`` says why)."""
        campaign, result = self.campaign, self.campaign.result
        if campaign.steering is not None:
            campaign.steering.frozen = False
            campaign.steering.update()

        @settings(
            database=campaign.database,
            max_examples=self.examples,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=((Phase.reuse,) if self.replay else ()) + (Phase.generate, Phase.shrink),
            report_multiple_bugs=True,
            verbosity=Verbosity.quiet,
            print_blob=False,
        )
        @hypothesis_seed(campaign.rng.getrandbits(64))
        @given(campaign.strategy)
        def round_of_cases(case: Case) -> None:
            self.test(case)

        if campaign.database is not None:
            round_of_cases._hypothesis_internal_database_key = campaign.database_key  # type: ignore[attr-defined]  # see database_key()

        def add(finding: Finding) -> None:
            _add(result, finding, campaign.on_finding)

        try:
            round_of_cases()
        except _ShrinkCut:
            for failure in self.shrinking.values():  # cut short: the descent goes on from the smallest seen so far
                add(self.finding(failure, cut=True, shrunk=False))
        except StopRequested as exc:
            for failure in self.shrinking.values():  # stopped mid-shrink: keep the smallest seen so far
                add(self.finding(failure, shrunk=False))
            result.stopped = _why(campaign.should_stop(), exc)
            return False
        except Flaky as exc:
            for failure in _failures(exc):
                add(self.finding(failure, flaky=True))
        except BaseException as exc:
            failures = _failures(exc)
            stopped = _stop_in(exc)
            if not failures and stopped is None:
                raise
            for failure in failures:
                add(self.finding(failure))
            if stopped is not None:  # stopped (or cut short) while Hypothesis was finishing the round
                for failure in self.shrinking.values():
                    add(self.finding(failure, cut=isinstance(stopped, _ShrinkCut), shrunk=False))
                if not isinstance(stopped, _ShrinkCut):
                    result.stopped = _why(campaign.should_stop(), stopped)
                    return False
        finally:
            result.shrinking = {}
        return True


def _polished(
    failure: CaseFailed, run_case, result: CampaignResult, budget: float, is_known, verdicts: dict[Case, Verdict]
):
    """``failure`` after a greedy descent from its case (``budget`` seconds at most), and whether it finished.
    ``verdicts`` holds the cases already run (this round's), which are not run again."""
    from shardfuzz.search.shrink import shrink_case

    if budget <= 0:
        return failure, False
    signature = failure.verdict.signature()

    def still_fails(case: Case) -> bool:
        if case not in verdicts:
            verdicts[case] = run_case(case)
            result.record(case, verdicts[case])
        verdict = verdicts[case]
        return verdict.is_failure and verdict.signature() == signature and not is_known(signature, case)

    try:
        outcome = shrink_case(failure.case, still_fails, budget=budget)
    except StopRequested:  # a case of the descent outran the budget's end (or a stop): keep the failure as it is
        return failure, False
    if outcome.case == failure.case:
        return failure, outcome.finished
    polished = type(failure)(outcome.case, verdicts[outcome.case])
    polished.from_database, polished.seconds = failure.from_database, failure.seconds
    return polished, outcome.finished


def _finding(failure: CaseFailed, **extra) -> Finding:
    return Finding(failure.case, failure.verdict, from_database=failure.from_database, seconds=failure.seconds, **extra)


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
