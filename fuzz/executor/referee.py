"""A float64 referee for continuation mismatches that may be float32 rounding.

Across layouts, ``continuation`` compares the two sides' training after the load within a tolerance
(``oracles.CONTINUATION_TOLERANCE`` and its slacks), because gradients are reduced in another order. Where a
gradient is mathematically zero (a Linear's bias before a BatchNorm, a final BatchNorm's bias under a squared
loss, whose gradient is 2x the bias and 0 at its initial 0), what is left is rounding noise, and training can
amplify it past any tolerance that still catches real faults: Adam turns noise of 1e-9 into a step of +lr on
one layout and -lr on the other, and the next gradients then differ by the curvature times that; SGD's
momentum carried a final BatchNorm's bias to 1.07e-6 on a tensor-parallel layout against 2.4e-8 on one rank.
Both cases, found by 600 s runs (``docs/measurements.md``, eleventh session), failed in float32 on the machine
that found them, every time, and passed in float64; on a later session's machine (an AMD EPYC with AVX-512, the
same torch 2.13.0+cpu) both pass in float32 outright: which cases get noise past the tolerance depends on where
they run (the CPU's kernels sum in their own order, presumably). The referee's test on real ranks therefore uses
``targets.controls.RoundingNoiseAfterLoad``, a difference of rounding's size on every machine.

So a verdict whose every mismatch is a tolerance comparison of ``continuation`` by at most ``ROUNDING_REACH`` is
run again with the model in float64 (the same case otherwise). Rounding noise is about 1e-16 there, below
Adam's ``eps``, and does not fork; a checkpoint fault (lost, stale or misplaced state) does not depend on the
dtype and fails again. Where float64 passes, the verdict is a pass that says why; where it fails in any way, or
the case has no float64 form, the float32 verdict stands.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from shardfuzz.case import Case, LowBitAdamW, Model
from shardfuzz.verdict import Mismatch, Verdict

__all__ = ["REFEREED", "ROUNDING_REACH", "in_float64", "is_refereed", "refereed", "rounding_suspect"]

#: How a tolerance comparison words its mismatch (``oracles._compare_value``); a bit-exact one says
#: "values differ", and identical layouts must match bit for bit whatever the dtype.
_TOLERANCE_DETAIL = "differs beyond"

#: How a refereed pass's ``detail`` begins.
REFEREED = "float32 rounding"

#: The largest difference the referee takes as possibly rounding's: a fork through a zero gradient moves a
#: parameter by at most a few learning rates (2 steps of lr <= 0.1 here) and a moment by a fraction of that
#: (2.0e-4 seen). A bug that differs by more and is flaky could pass one float64 run by chance (corpus
#: 1759ee2a: uninitialised memory in a BatchNorm's running mean, -2.9e6 against -249) and is not refereed.
ROUNDING_REACH = 0.5


def rounding_suspect(case: Case, verdict: Verdict) -> bool:
    """Whether ``verdict`` could be float32 rounding: a mismatch whose every complaint is a continuation
    tolerance comparison, of a case that computes in float32."""
    return (
        verdict.status == "mismatch"
        and bool(verdict.mismatches)
        and all(
            m.oracle == "continuation" and m.detail.startswith(_TOLERANCE_DETAIL) and _within_reach(m)
            for m in verdict.mismatches
        )
        and case.compute_dtype == "float32"
    )


def _within_reach(mismatch: Mismatch) -> bool:
    try:
        return abs(float(mismatch.expected) - float(mismatch.actual)) <= ROUNDING_REACH
    except ValueError:  # not one number each
        return False


def in_float64(case: Case) -> Case | None:
    """``case`` with its model in float64, or None where it has no such form (a user's model, whose dtype is
    its own; torchao's low-bit AdamW, whose moments are float32 codes whatever the parameters hold)."""
    if not isinstance(case.model, Model) or isinstance(case.optimizer, LowBitAdamW):
        return None
    try:
        return attrs.evolve(case, model=attrs.evolve(case.model, dtype="float64"))
    except ValueError:
        return None


def refereed(case: Case, verdict: Verdict, run: Callable[[Case], Verdict]) -> Verdict:
    """``verdict``, or a pass where it is a ``rounding_suspect`` whose float64 form passes under ``run``."""
    if not rounding_suspect(case, verdict):
        return verdict
    wider = in_float64(case)
    if wider is None:
        return verdict
    again = run(wider)
    if not again.ok:
        return verdict
    return Verdict(
        "pass",
        detail=f"{REFEREED}: {verdict.mismatches[0].describe()}; in float64 the case passes",
        seconds=verdict.seconds + again.seconds,
        unchanged=verdict.unchanged,  # non-vacuity is the float32 run's: the case as drawn
    )


def is_refereed(verdict: Verdict) -> bool:
    """Whether ``verdict`` is a pass the referee decided (its float32 run differed)."""
    return verdict.ok and verdict.detail.startswith(REFEREED)
