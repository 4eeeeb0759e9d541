"""``shardfuzz selftest``: fuzz every mutant of the catalogue and report which the oracles kill.

For each mutant (``mutants.CATALOGUE``, or with ``target`` a framework's target, the faults of
``object_faults`` injected into its path) a fresh pool runs a campaign with that
mutant as the checkpoint target until its first finding is shrunk or its time
budget runs out (``budget_per_mutant`` to find it, ``shrink_budget`` more to shrink it). Known torch bugs (from the
corpus) are let pass, and so is any failure a second pool with the unmutated target shows the same way, so a kill is
a failure that only the mutant causes. Per mutant: killed or survived, the
oracle (or error) that fired, seconds to the first failing case, the size of the
shrunk case, and whether its shrink finished and how long it took.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from attrs import asdict, frozen

from shardfuzz.case import Case
from shardfuzz.executor import pool_for
from shardfuzz.findings.describe import describe
from shardfuzz.search.campaign import CampaignResult, CampaignSettings, FunctionHost, run_campaign
from shardfuzz.search.shrink import case_size
from shardfuzz.targets import DEFAULT_TARGET, FAULT_SEPARATOR, ObjectTarget, resolve_target, support_for
from shardfuzz.targets.mutants import CATALOGUE

__all__ = ["MutantResult", "case_size", "catalogue_for", "describe", "run_selftest"]


def catalogue_for(target: str | None = None) -> dict[str, tuple[str, str]]:
    """``{mutant: (target spec, expected oracle)}``: DCP's mutants (``mutants.CATALOGUE``) for the default
    target, the faults of ``object_faults`` injected into an object-level target's path otherwise."""
    if target in (None, DEFAULT_TARGET, "dcp"):
        return {name: (f"shardfuzz.targets.mutants:{name}", oracle) for name, oracle in CATALOGUE.items()}
    from shardfuzz.targets.faults import OBJECT_FAULTS

    if not isinstance(resolve_target(target), ObjectTarget):
        raise ValueError(
            f"target {target!r} is a state-dict target: the self-test injects its faults into DCP (the default) "
            "or into an object-level target's path (a framework's)"
        )
    return {name: (f"{target}{FAULT_SEPARATOR}{name}", fault.expected_oracle) for name, fault in OBJECT_FAULTS.items()}


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
    target: str | None = None,
    is_known: Callable[[str, Case], bool] = lambda signature, case: False,
    on_result: Callable[[MutantResult], None] | None = None,
    device: str = "cpu",
) -> list[MutantResult]:
    """``device`` ``cuda``: the pools' ranks hold GPUs (one per rank below the GPU count) and sides are
    drawn on either device, as ``shardfuzz run --device cuda`` draws them."""
    catalogue = catalogue_for(target)
    names = mutants or list(catalogue)
    unknown = sorted(set(names) - set(catalogue))
    if unknown:
        raise ValueError(f"no such mutant(s) {unknown}; the catalogue has {sorted(catalogue)}")
    results = []
    for name in names:
        started = time.monotonic()
        spec, expected_oracle = catalogue[name]
        settings = CampaignSettings(
            model=_exposing_model(spec),
            budget=budget_per_mutant + shrink_budget,  # finding it, then shrinking it
            seed=seed,
            max_world_size=world_size,
            stop_on_finding=True,
            vary_storage=False,
            support=support_for(spec),
            shrink_budget=shrink_budget,
            devices=("cpu", "cuda") if device == "cuda" else ("cpu",),
        )
        baseline = spec.split(FAULT_SEPARATOR)[0] if FAULT_SEPARATOR in spec else DEFAULT_TARGET
        with (
            pool_for(world_size, target=spec, device=device) as pool,
            pool_for(world_size, target=baseline, device=device) as unmutated,
        ):
            not_the_mutants = _failing_without_the_mutant(unmutated.run, is_known)
            campaign = run_campaign(FunctionHost(pool.run, is_known=not_the_mutants), settings)
        result = _mutant_result(name, expected_oracle, campaign, seconds=round(time.monotonic() - started, 1))
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def _exposing_model(spec: str):
    """The model a fault of an object-level target's path declares it shows on (``_Fault.exposing_model``), or None:
    the campaign draws its models."""
    if FAULT_SEPARATOR not in spec:
        return None
    from shardfuzz.targets.faults import OBJECT_FAULTS

    return OBJECT_FAULTS[spec.split(FAULT_SEPARATOR)[1]].exposing_model


def _failing_without_the_mutant(run_unmutated, is_known) -> Callable[[str, Case], bool]:
    """``is_known``, and also true where the unmutated target fails the case the same way: a torch bug met outside
    its corpus entries' measured conditions is torch's, not the mutant's, and no kill (self-test runs of a mutant had
    stopped at such bugs, counting them as its kills)."""

    def known(signature: str, case: Case) -> bool:
        return is_known(signature, case) or run_unmutated(case).signature() == signature

    return known


def _mutant_result(name: str, expected_oracle: str, campaign: CampaignResult, *, seconds: float) -> MutantResult:
    """What the campaign against mutant ``name`` found: its smallest finding, the oracle that fired, how fast."""
    finding = min(campaign.findings.values(), key=lambda f: case_size(f.case), default=None)
    killed_by = ""
    if finding is not None:
        verdict = finding.verdict
        killed_by = verdict.mismatches[0].oracle if verdict.mismatches else verdict.signature()[:80]
    return MutantResult(
        mutant=name,
        expected_oracle=expected_oracle,
        killed=finding is not None,
        killed_by=killed_by,
        seconds_to_detect=None if campaign.first_failure_seconds is None else round(campaign.first_failure_seconds, 2),
        shrunk_case_size=case_size(finding.case) if finding else None,
        shrunk_case=describe(finding.case) if finding else "",
        cases_run=campaign.cases_run,
        seconds=seconds,
        shrunk=finding.shrunk if finding else None,
        shrink_seconds=finding.shrink_seconds if finding else None,
    )
