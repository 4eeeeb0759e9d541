"""The known bugs a campaign masks from its first draw, and under which conditions (``Steering.expect``).

A bug's corpus entries say where it is: an explained entry measured what sets its failure apart, a triaged
one records ``known.when``. A bug met through the save side's engine and through the load side's is two
forms, each with its own mask; within a form, the entries' conditions are generalized as
``KnownBugs.conditions`` does for matching.
"""

from __future__ import annotations

from shardfuzz.case import dimensions
from shardfuzz.case.conditions import generalize
from shardfuzz.findings.corpus import Entry, KnownBugs
from shardfuzz.search.steering import Expectation
from shardfuzz.verdict import FORM

__all__ = ["expectations", "forms"]


def expectations(known: KnownBugs) -> dict[str, Expectation]:
    """Known bugs masked from the first draw, by mask key (``verdict.FORM``): each form of a bug under what
    an explanation measured sets it apart (``Explanation.telling``, generalized across the form's explained
    entries), or where none of the form's entries is explained, under their ``known.when`` if each hit costs
    a restart or it names more than two conditions. A costly finding that is not a bug is never probed. A
    signature two bugs share, or a form with no condition, is left to the masks the run learns."""
    masks: dict[str, Expectation] = {}
    for signature in known:
        bugs = known.conditions(signature)
        if len(bugs) != 1:
            continue
        ((members, _),) = bugs.values()
        costly = any(entry.costs_a_restart for entry in members)
        probed = not costly or any(entry.known is not None and entry.known.kind == "bug" for entry in members)
        for number, form in enumerate(forms(members)):
            key = signature if number == 0 else f"{signature}{FORM}{number}"
            explained = [entry for entry in form if entry.explanation is not None and entry.explanation.complete]
            if explained:
                if conditions := generalize([_told(entry) for entry in explained]):
                    case = dimensions(explained[0].case)
                    masks[key] = Expectation(conditions, measured=True, case=case, costly=costly, probed=probed)
            elif (conditions := generalize([entry.when for entry in form])) and (costly or len(conditions) > 2):
                masks[key] = Expectation(conditions, costly=costly, probed=probed)
    return masks


def forms(entries: list[Entry]) -> list[list[Entry]]:
    """A bug's entries by form: those whose ``known.when`` (or explained conditions) need the same engines on
    the same sides, and name the same dimensions; a bug found through the save side's engine and through the load
    side's has two. Entries of one engine that need other dimensions are other forms too: generalizing across them
    keeps only the dimensions they share, a mask far wider than either (FSDP1 flat parameters on HSDP's second
    replica, and on a group without global rank 0, shared only 'FSDP1 with flat parameters': a run masked 423 such
    draws)."""
    groups: dict[tuple, list[Entry]] = {}
    for entry in entries:
        told = _told(entry)
        engines = tuple(sorted((k, v) for k, v in told.items() if k.endswith("_engine")))
        groups.setdefault((engines, tuple(sorted(told))), []).append(entry)
    return list(groups.values())


def _told(entry: Entry) -> dict[str, str]:
    """What sets the entry's failure apart: its explanation's telling values (where explained) and its ``when``."""
    telling = entry.explanation.telling(dimensions(entry.case)) if entry.explanation is not None else {}
    return {**telling, **entry.when}
