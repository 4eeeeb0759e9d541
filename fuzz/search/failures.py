"""How a round's failures travel through Hypothesis: a class per signature, the shrink's cut, and the way back out.

Hypothesis tracks distinct bugs by the exception's type, so each failure signature raises its own
subclass of ``CaseFailed`` and is shrunk on its own. A round ends early by raising a ``StopRequested``
(a stop) or a ``ShrinkCut`` (its shrink budget spent); what Hypothesis raises at the end of a round may
wrap several of these in exception groups, which ``failures_in`` and ``stop_in`` look through.
"""

from __future__ import annotations

from shardfuzz.case import Case
from shardfuzz.executor.stop import StopRequested
from shardfuzz.findings.campaign_result import CaseFailed
from shardfuzz.verdict import Verdict

__all__ = ["ShrinkCut", "failure_for", "failures_in", "stop_in", "stop_reason"]

_FAILURE_CLASSES: dict[str, type[CaseFailed]] = {}


def failure_for(case: Case, verdict: Verdict) -> CaseFailed:
    """A ``CaseFailed`` whose class is unique to the verdict's signature (Hypothesis tracks bugs by type)."""
    signature = verdict.signature()
    cls = _FAILURE_CLASSES.get(signature)
    if cls is None:
        cls = type(f"CaseFailed{len(_FAILURE_CLASSES)}", (CaseFailed,), {"__module__": __name__})
        _FAILURE_CLASSES[signature] = cls
    return cls(case, verdict)


class ShrinkCut(StopRequested):
    """A round's shrink budget (or the campaign's) ran out: the round ends, its failures are kept as small
    as they got (``shrunk=False``), and the campaign goes on while it has budget."""


def stop_reason(reason: str | bool | None, exc: StopRequested) -> str:
    """The stop's reason as the host gave it (a signal's name), else the exception's words."""
    return reason if isinstance(reason, str) and reason else (str(exc) or "stopped")


def stop_in(exc: BaseException) -> StopRequested | None:
    """The ``StopRequested`` in ``exc`` or in a group Hypothesis made of it, if any."""
    if isinstance(exc, StopRequested):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        found = stop_in(inner)
        if found is not None:
            return found
    return None


def failures_in(exc: BaseException) -> list[CaseFailed]:
    """The ``CaseFailed`` that is ``exc``, or those in the groups Hypothesis made of several."""
    if isinstance(exc, CaseFailed):
        return [exc]
    found: list[CaseFailed] = []
    for inner in getattr(exc, "exceptions", ()):
        found.extend(failures_in(inner))
    return found
