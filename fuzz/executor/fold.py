"""Folding the ranks' reports of one case into its verdict: shared by every executor (the warm pool,
torchrun) and free of processes, so it is tested with hand-made reports."""

from __future__ import annotations

from collections.abc import Callable

from shardfuzz.executor.messages import CaseReport, Message
from shardfuzz.verdict import RankError, RankReport, Verdict, converter

__all__ = ["fold_reports", "report_of"]


def fold_reports(
    reports: list[RankReport],
    missing,
    *,
    timeout: float,
    phase_of: Callable[[int], str] = lambda rank: "unknown",
    stacks_of: Callable[[list[int]], str] = lambda ranks: "",
) -> Verdict:
    """The verdict of a case whose ranks are all alive: ``missing`` ranks sent no report by the deadline."""
    errors = tuple(r.error for r in reports if r.error is not None)
    mismatches = tuple(m for r in reports for m in r.mismatches)
    if errors:
        detail = f"no report from ranks {sorted(missing)}" if missing else ""
        stacks = stacks_of(sorted(missing)) if missing else ""
        return Verdict("error", mismatches, errors, detail=detail, diagnostics=stacks)
    if missing:
        stuck = sorted(missing)
        phases = {r: phase_of(r) for r in stuck}
        stacks = stacks_of(stuck)
        where = ",".join(sorted(set(phases.values())))
        return Verdict(
            "hang",
            mismatches,
            errors,
            detail=f"ranks {stuck} did not finish within {timeout:g}s "
            f"({', '.join(f'rank {r} in {p}' for r, p in phases.items())})",
            where=where,
            how="deadline",
            diagnostics=stacks,
        )
    unchanged = tuple(key for r in reports for key in r.unchanged)
    if mismatches:
        return Verdict("mismatch", mismatches, unchanged=unchanged)
    return Verdict("pass", unchanged=unchanged)


def report_of(rank: int, reply: Message) -> RankReport:
    """A rank's reply to a case as a RankReport; one that is not a readable report is that rank's error,
    not the runner's."""
    if not isinstance(reply, CaseReport):
        return _bad_report(rank, f"sent {reply!r} instead of its report")
    try:
        return converter.structure(reply.report, RankReport)
    except Exception as exc:
        return _bad_report(rank, f"unreadable report: {exc!r}")


def _bad_report(rank: int, why: str) -> RankReport:
    return RankReport(rank, error=RankError(rank, "report", "BadReport", why[:500]))
