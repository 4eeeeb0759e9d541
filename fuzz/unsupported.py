"""Combinations torch documents as unsupported: one list, a reason for each rule.

A case that hits one of these is not a bug and not a pass: its verdict becomes
``unsupported``, it is counted in reports, never shrunk or saved to the corpus.
A rule matches a rank's error by exception type and a message pattern, and only
an error raised where torch checks its arguments on purpose (not a crash, not a
mismatch: those are never excused).
"""

from __future__ import annotations

import re

import attrs
from attrs import frozen

from shardfuzz.verdict import Verdict

__all__ = ["Rule", "RULES", "classify"]


@frozen
class Rule:
    name: str
    reason: str
    types: tuple[str, ...]
    message: re.Pattern = attrs.field(converter=lambda p: re.compile(p, re.IGNORECASE))

    def matches(self, error) -> bool:
        return error.type in self.types and bool(self.message.search(error.message))


RULES: tuple[Rule, ...] = (
    Rule(
        "not-implemented",
        "torch raises NotImplementedError with 'not supported' / 'only supports' where it checks a "
        "feature it has not implemented (FSDP2 on non-contiguous parameters, flattening an optimizer "
        "state that is not a tensor/int/float/dict, resharding DTensor parameters to a smaller mesh). "
        "That is a documented limit, not a defect.",
        ("NotImplementedError",),
        r"not (yet )?support|only supports|not implemented",
    ),
    Rule(
        "multiple-optimizers",
        "get_state_dict/set_state_dict document that one module with several optimizers is not supported",
        ("ValueError", "RuntimeError"),
        r"multiple optimizers are not supported",
    ),
)


def classify(verdict: Verdict, rules: tuple[Rule, ...] = RULES) -> Verdict:
    """``verdict`` as ``unsupported`` when its root error (lowest rank) matches a rule; else unchanged.

    Peers of the failing rank often report only an echo (a closed connection), so
    the root decides, as it does for the signature.
    """
    if verdict.status != "error" or not verdict.errors:
        return verdict
    root = min(verdict.errors, key=lambda e: e.rank)
    for rule in rules:
        if rule.matches(root):
            return attrs.evolve(verdict, status="unsupported", detail=f"{rule.name}: {rule.reason}")
    return verdict
