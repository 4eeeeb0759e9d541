"""The Hypothesis-driven loop: draw a Case, run it on the pool, shrink failures, keep the results.

A campaign runs rounds of a ``@given`` test, each with a fresh seed, until the
budget is spent. Inside the test a failure whose signature is new raises an
exception of a class made for that signature (``shardfuzz.search.failures``), so
Hypothesis shrinks each distinct failure separately instead of slipping from one
bug to another. Failures already known (from the corpus, or shrunk earlier in
this campaign) are counted and let pass, so one common bug cannot eat the whole budget.

With an example ``database`` the first round replays what it holds before
drawing anything new: failures an earlier (or another machine's) campaign
saved come back first. A ``StopRequested`` raised by the host (its ``should_stop``
answering, or its ``run_case``) ends the campaign at once; failures still being
shrunk are kept as they stand (``Finding.shrunk`` False), so nothing found is lost.
"""

from __future__ import annotations

import random
import time

from hypothesis import HealthCheck, Phase, Verbosity, event, given
from hypothesis import seed as hypothesis_seed
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Flaky, Unsatisfiable

from shardfuzz.case import Case, dimensions
from shardfuzz.executor.stop import StopRequested
from shardfuzz.findings.campaign_result import TIME_CATEGORIES, CampaignResult, CaseFailed, Finding, time_category
from shardfuzz.search.campaign_settings import CampaignSettings
from shardfuzz.search.failures import ShrinkCut, failure_for, failures_in, stop_in, stop_reason
from shardfuzz.search.host import CampaignHost, FunctionHost
from shardfuzz.search.pairs import PairSteering
from shardfuzz.search.polish import polished
from shardfuzz.search.steering import Steering
from shardfuzz.strategies import cases
from shardfuzz.verdict import Verdict

__all__ = [
    "CampaignHost",
    "CampaignResult",
    "CampaignSettings",
    "CaseFailed",
    "Finding",
    "FunctionHost",
    "TIME_CATEGORIES",
    "database_key",
    "label",
    "run_campaign",
]


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


def run_campaign(host: CampaignHost, settings: CampaignSettings) -> CampaignResult:
    """Fuzz until the budget is spent; return what was run and found.

    ``host`` runs the cases and hears what was found (``CampaignHost``; ``FunctionHost`` makes one of a
    function that runs a case); ``settings`` say for how long, what to draw, and when to stop.

    The first case of each new failure signature is run again by ``host.confirm``; if it does not fail
    the same way, the failure is recorded as a flaky finding with both outcomes and is not shrunk. The
    others are shrunk by Hypothesis, then (``settings.polish``) by a greedy descent over one-step-simpler
    cases (``shardfuzz.search.polish``) with what is left of the shrink budget. A finding is ``shrunk``
    when that descent finished (no one-step-simpler case fails the same way: the test ``shardfuzz
    shrink`` uses too), whether Hypothesis finished or was cut at its share.

    With ``settings.steer_after``, ``result.steering`` holds the masks of the known bugs, and
    ``result.masked`` and ``result.probes`` count what they did.
    """
    return Campaign(host, settings).run()


class Campaign:
    """One campaign: rounds of Hypothesis examples until the budget or ``max_cases`` is spent, each round's new
    failures shrunk; ``run`` returns the result."""

    def __init__(self, host: CampaignHost, settings: CampaignSettings):
        self.host, self.settings = host, settings
        self.result = CampaignResult()
        self.rng = random.Random(settings.seed)
        self.started = self.result.started
        self.deadline = self.started + settings.budget
        budget, shrink_budget = settings.budget, settings.shrink_budget
        self.shrink_budget = max(30.0, budget / 2) if shrink_budget is None else shrink_budget
        # Hypothesis shrinks the choices it drew; the greedy descent shrinks the case itself, in steps that can be
        # many choices apart. Past its share, Hypothesis stops and the descent goes on from its smallest case.
        self.hypothesis_shrink = self.shrink_budget * (HYPOTHESIS_SHRINK_SHARE if settings.polish else 1.0)
        all_cases = cases(
            max_world_size=settings.max_world_size,
            devices=settings.devices,
            vary_storage=settings.vary_storage,
            support=settings.support,
            model=settings.model,
        )
        self.confirmed: set[str] = set()  # signatures whose first failure was offered to ``host.confirm``
        self.steering: Steering | None = None
        if settings.steer_after is not None:
            self.steering = Steering(after=settings.steer_after, own_case=host.known_dimensions)
            for signature, conditions in settings.expected.items():
                self.steering.expect(signature, conditions)
            # The result shows the masks as they stand, and what they did.
            self.result.steering = self.steering.masks
            self.result.masked, self.result.probes = self.steering.masked, self.steering.probes
        self.pairs = PairSteering()
        self.result.reached_pairs = self.pairs.reached
        wanted = []
        if self.steering is not None:
            steering, pairs, pairwise = self.steering, self.pairs, settings.pairwise
            wanted.append(
                lambda case: steering.wanted(case, holds_rare=(lambda: pairs.holds_rare(case)) if pairwise else None)
            )
        if settings.pairwise:
            wanted.append(self.pairs.wanted)  # after the masks: a masked draw is not a new pair's to run
        # A round whose every draw the filters passed over (a small space, where Hypothesis draws the same few
        # cases again) ends Unsatisfiable: the next round draws with the filters open.
        self.filters_open = self.open_filters_next = False
        self.strategy = (
            all_cases.filter(lambda case: self.filters_open or all(want(case) for want in wanted))
            if wanted
            else all_cases
        )
        # The time category (and known signature) of the last case, whose failure may leave ranks to restart.
        self.restart_owed_to: tuple[str, str | None] = ("pool", None)

    def out_of_cases(self) -> bool:
        return self.settings.max_cases is not None and self.result.cases_run >= self.settings.max_cases

    def out_of_work(self) -> bool:
        return time.monotonic() >= self.deadline or self.out_of_cases()

    def run(self) -> CampaignResult:
        result = self.result
        while not self.out_of_work():
            result.rounds += 1
            if not _Round(self).run():
                break
            if self.settings.stop_on_finding and result.findings:
                result.stopped = "finding"
                break
        if not result.stopped:
            result.stopped = "max-cases" if self.out_of_cases() else "budget"
        result.wall_seconds = time.monotonic() - self.started
        result.sample()
        return result

    def account(self, case: Case, verdict: Verdict, spent: float) -> tuple[str, bool]:
        """Record a case's verdict and where its time went; its signature, and whether it is a known bug's."""
        result = self.result
        result.record(case, verdict)
        signature = verdict.signature()
        known = verdict.is_failure and self.host.is_known(signature, case)
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
        if known and self.steering is not None and not self.steering.covers(case, signature):
            result.known_unmasked[signature] += 1
            example = {"seconds_in_case": round(verdict.seconds, 2), "dimensions": dict(dimensions(case))}
            result.known_unmasked_example[signature] = example
        self.pairs.observe(case)
        result.pairwise = self.pairs.summary()
        if self.steering is not None:  # a combination torch refuses is as known as a known bug, and as useless again
            repeat = known or verdict.status == "unsupported"
            self.steering.observe(case, signature if repeat else None, costly=verdict.leaves_ranks_stuck)
        return signature, known

    def flaky_on_confirmation(self, case: Case, verdict: Verdict, signature: str) -> bool:
        """Offer the first case of a new signature to ``host.confirm``; True (and a flaky finding kept) when
        it does not fail the same way again."""
        if signature in self.confirmed:
            return False
        self.confirmed.add(signature)
        result = self.result
        result.confirming = True
        before = time.monotonic()
        try:
            again = self.host.confirm(case)
        except StopRequested:  # the budget's end or a stop cut the re-run: keep the failure as first seen
            self.keep(Finding(case, verdict, shrunk=False, seconds=before - self.started, unfinished=("confirmation",)))
            raise
        finally:
            result.confirming = False
        if again is None:  # nowhere to confirm it: the failure stands as first seen
            return False
        result.time_spent["new failures"] += time.monotonic() - before
        result.record(case, again)
        if again.signature() == signature:
            return False
        self.keep(Finding(case, verdict, flaky=True, other=again))
        return True

    def keep(self, finding: Finding) -> None:
        """Add a finding of a new signature to the result, and tell the host."""
        if finding.signature not in self.result.findings:
            self.result.findings[finding.signature] = finding
            before = time.monotonic()
            try:
                self.host.on_finding(finding)
            finally:
                self.result.time_spent["findings"] += time.monotonic() - before


class _Round:
    """One round of a campaign: Hypothesis draws up to ``examples`` cases, and shrinks the new failures."""

    def __init__(self, campaign: Campaign):
        self.campaign = campaign
        result = campaign.result
        database, key = campaign.settings.database, campaign.settings.database_key
        self.replay = database is not None and result.rounds == 1
        if database is not None and self.replay:
            result.replayed_from_database = sum(1 for _ in database.fetch(key))
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
        time_left = campaign.deadline - time.monotonic()
        examples = max(1, min(campaign.settings.round_size, int(time_left / max(mean_case, 1e-3))))
        max_cases = campaign.settings.max_cases
        if max_cases is not None:
            examples = max(1, min(examples, max_cases - result.cases_run))
        if self.replay:
            examples += result.replayed_from_database  # Hypothesis counts replays against max_examples
        self.examples = examples

    def test(self, case: Case) -> None:
        """Hypothesis's test: run ``case``; raise ``CaseFailed`` for a new failure (Hypothesis then shrinks it)."""
        campaign, result = self.campaign, self.campaign.result
        reason = campaign.host.should_stop()
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
            raise ShrinkCut("the shrink budget is spent")  # at once: Hypothesis would go on drawing for seconds
        label(case)
        verdict = self.verdicts[case] = campaign.host.run_case(case)
        signature, known = campaign.account(case, verdict, time.monotonic() - now)
        result.cases_after_failure += self.first_failure is not None
        campaign.host.on_case(result, case, verdict)
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
            campaign.pairs.frozen = True  # a shrink's candidates bring no new pair: none may be passed over
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
        if campaign.settings.polish and (shrunk or cut) and not extra.get("flaky") and self.first_failure is not None:
            left = min(self.first_failure + campaign.shrink_budget, campaign.deadline) - time.monotonic()
            failure, shrunk = polished(failure, campaign.host, result, left, self.verdicts)
        shrink = {
            "shrink_cases": result.cases_run - self.cases_at_first_failure,
            "shrink_seconds": round(time.monotonic() - self.first_failure, 2)
            if self.first_failure is not None
            else 0.0,
        }
        return Finding(
            failure.case,
            failure.verdict,
            from_database=failure.from_database,
            seconds=failure.seconds,
            **{"shrunk": shrunk, **shrink, **extra},
        )

    def run(self) -> bool:
        """Run the round; False when the campaign was asked to stop (``result.stopped`` says why)."""
        campaign, result = self.campaign, self.campaign.result
        campaign.pairs.frozen = False
        campaign.filters_open, campaign.open_filters_next = campaign.open_filters_next, False
        if campaign.steering is not None:
            campaign.steering.frozen = False
            campaign.steering.update()
        database = campaign.settings.database

        @hypothesis_settings(
            database=database,
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

        if database is not None:
            round_of_cases._hypothesis_internal_database_key = campaign.settings.database_key  # type: ignore[attr-defined]  # see database_key()

        try:
            round_of_cases()
        except ShrinkCut:
            for failure in self.shrinking.values():  # cut short: the descent goes on from the smallest seen so far
                campaign.keep(self.finding(failure, cut=True, shrunk=False))
        except StopRequested as exc:
            for failure in self.shrinking.values():  # stopped mid-shrink: keep the smallest seen so far
                campaign.keep(self.finding(failure, shrunk=False))
            result.stopped = stop_reason(campaign.host.should_stop(), exc)
            return False
        except Flaky as exc:
            for failure in failures_in(exc):
                campaign.keep(self.finding(failure, flaky=True))
        except Unsatisfiable:  # the filters passed over every draw of the round
            campaign.open_filters_next = True
            result.rounds_filtered_out += 1
        except BaseException as exc:
            failures = failures_in(exc)
            stopped = stop_in(exc)
            if not failures and stopped is None:
                raise
            for failure in failures:
                campaign.keep(self.finding(failure))
            if stopped is not None:  # stopped (or cut short) while Hypothesis was finishing the round
                for failure in self.shrinking.values():
                    campaign.keep(self.finding(failure, cut=isinstance(stopped, ShrinkCut), shrunk=False))
                if not isinstance(stopped, ShrinkCut):
                    result.stopped = stop_reason(campaign.host.should_stop(), stopped)
                    return False
        finally:
            result.shrinking = {}
        return True
