"""What a campaign asks of whoever runs it (``CampaignHost``), and a host made of plain functions (``FunctionHost``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from attrs import field, frozen

from shardfuzz.case import Case
from shardfuzz.findings.campaign_result import CampaignResult, Finding
from shardfuzz.verdict import Verdict

__all__ = ["CampaignHost", "FunctionHost"]


class CampaignHost(Protocol):
    """The campaign's side of a run: it runs the cases, knows the known bugs, and hears what was found.

    For each case it draws, a campaign calls, in this order:

    1. ``should_stop()``: a truthy answer (the reason: a signal's name) ends the campaign at once, with
       the failures being shrunk kept as they stand; asked again, for its reason, when the stop lands.
    2. ``run_case(case)``: the case's verdict (a ``StopRequested`` it raises ends the campaign too).
    3. ``is_known(signature, case)``, for a failing verdict: a known bug's hits are counted, not shrunk.
    4. ``known_dimensions(signature, case)``, with steering, at the first hit of a known bug (or of a
       combination torch does not support): the dimensions of the bug's own (shrunk) case, or None; only
       what the hits share with it may mask the bug's look-alikes.
    5. ``on_case(result, case, verdict)``: the case is recorded in ``result``.
    6. ``confirm(case)``, for the first case of a new failure signature: the case run again where no
       earlier case can have left state (a fresh pool), or None where there is none (the failure stands
       unconfirmed). A failure that does not repeat is kept as a flaky finding with both outcomes.
    7. ``on_finding(finding)``, once per new finding, when it is kept (shrunk, flaky, or cut short).

    The greedy descent after Hypothesis's shrink (``shardfuzz.search.polish``) calls ``run_case`` and
    ``is_known`` for its cases too.
    """

    def should_stop(self) -> str | bool | None: ...

    def run_case(self, case: Case) -> Verdict: ...

    def is_known(self, signature: str, case: Case) -> bool: ...

    def known_dimensions(self, signature: str, case: Case) -> Mapping[str, str] | None: ...

    def on_case(self, result: CampaignResult, case: Case, verdict: Verdict) -> None: ...

    def confirm(self, case: Case) -> Verdict | None: ...

    def on_finding(self, finding: Finding) -> None: ...


def _never_stop() -> None:
    return None


def _nothing_known(signature: str, case: Case) -> bool:
    return False


def _no_dimensions(signature: str, case: Case) -> None:
    return None


def _unheard_case(result: CampaignResult, case: Case, verdict: Verdict) -> None:
    return None


def _unconfirmed(case: Case) -> None:
    return None


def _unheard_finding(finding: Finding) -> None:
    return None


@frozen
class FunctionHost:
    """A ``CampaignHost`` made of functions: ``run_case`` runs a case (``RankPool.run``, say); the others, each
    given by keyword where wanted, answer as if alone: never stop, nothing known, no confirmation, nobody told."""

    run_case: Callable[[Case], Verdict]
    should_stop: Callable[[], str | bool | None] = field(default=_never_stop, kw_only=True)
    is_known: Callable[[str, Case], bool] = field(default=_nothing_known, kw_only=True)
    known_dimensions: Callable[[str, Case], Mapping[str, str] | None] = field(default=_no_dimensions, kw_only=True)
    on_case: Callable[[CampaignResult, Case, Verdict], None] = field(default=_unheard_case, kw_only=True)
    confirm: Callable[[Case], Verdict | None] = field(default=_unconfirmed, kw_only=True)
    on_finding: Callable[[Finding], None] = field(default=_unheard_finding, kw_only=True)
