"""A finding's explanation as data: what each neighbour of its case did, and what that says (``search.explain``
measures it; the corpus keeps it in the entry)."""

from __future__ import annotations

from collections.abc import Iterable

from attrs import field, frozen
from attrs.validators import in_, instance_of

from shardfuzz.case._validators import strings

__all__ = [
    "EDGES",
    "FAILS_OTHERWISE_AT_REALISTIC",
    "NEIGHBOUR_OUTCOMES",
    "PASSES_AT_REALISTIC",
    "Explanation",
    "Neighbour",
]

#: What a neighbour did: failed with the case's signature, failed otherwise, passed, or could not run here.
NEIGHBOUR_OUTCOMES = ("same failure", "other failure", "passes", "not supported")

#: How a reach begins where the realistic case did not fail the same way: it passed, or it failed another way.
PASSES_AT_REALISTIC = "passes at realistic widths"
FAILS_OTHERWISE_AT_REALISTIC = "fails otherwise at realistic widths"

#: The edges a shrunk case may stand on that a realistic one does not, by the ``dimensions`` label that says so.
EDGES = {
    "empty_shard": "a rank holding an empty shard",
    "uneven_split": "a width that does not split evenly",
    "one_element": "a layer of one element (width 1)",
    "narrow": "a width below the world size",
}


@frozen
class Neighbour:
    """One neighbour: the dimension it changes (a ``case.dimensions`` label where there is one), how,
    what it did, and for another failure its signature (for 'not supported', why)."""

    dimension: str
    change: str
    outcome: str = field(validator=in_(NEIGHBOUR_OUTCOMES))
    detail: str = ""


def _rows(rows: Iterable[Neighbour]) -> tuple[Neighbour, ...]:
    return tuple(rows)


@frozen
class Explanation:
    """What running the case's neighbours measured (``explain_case``).

    ``necessary``: ``{label: value}``, the case's value of each labelled dimension whose change made it pass.
    ``free``: the labels whose every change kept the same failure. ``realistic``: what the nearest realistic
    case did (a ``NEIGHBOUR_OUTCOMES`` value, or '' when there is none: a user's own model), ``edges``: the
    ``EDGES`` keys the shrunk case has that the realistic one lacks; ``edge_trials``, which of them alone brings
    the failure back to the realistic case. ``complete``: every neighbour ran (False:
    cut short by the budget or a stop; ``shardfuzz explain ENTRY`` runs it again whole)."""

    neighbours: tuple[Neighbour, ...] = field(converter=_rows)
    necessary: dict[str, str] = field(factory=dict)
    free: tuple[str, ...] = field(default=(), converter=strings)
    realistic: str = field(default="", validator=in_(("", *NEIGHBOUR_OUTCOMES)))
    edges: tuple[str, ...] = field(default=(), converter=strings)
    complete: bool = field(default=True, validator=instance_of(bool))
    torch: str = ""
    date: str = ""
    # Where the realistic case passes: the realistic case with one edge put back at a time, mildest first (the
    # row's dimension is the ``EDGES`` key it adds), and what each did.
    edge_trials: tuple[Neighbour, ...] = field(default=(), converter=_rows)

    @property
    def bites_realistic_setups(self) -> bool | None:
        """Whether the nearest realistic case fails the same way (None: not measured)."""
        if self.realistic in ("", "not supported"):
            return None
        return self.realistic == "same failure"

    def telling(self, dims: dict[str, str]) -> dict[str, str]:
        """What sets this failure apart among draws, as conditions on a case's dimensions ``dims`` (its own
        case's): the necessary values, and the case's value of each labelled dimension whose every change that
        ran failed another way (the failure is this one only with that value). For steering, not for ``when``:
        a change that fails otherwise does not say the failure needs the value, only that a draw without it is
        not a hit of this bug."""
        seen: dict[str, set[str]] = {}
        for row in self.neighbours:
            if row.dimension in dims and row.outcome != "not supported":
                seen.setdefault(row.dimension, set()).add(row.outcome)
        other = {label: dims[label] for label, outcomes in seen.items() if outcomes == {"other failure"}}
        return {**other, **self.necessary}

    @property
    def edge_needed(self) -> Neighbour | None:
        """The mildest edge whose trial failed the same way (None: none did, or none was tried)."""
        return next((trial for trial in self.edge_trials if trial.outcome == "same failure"), None)

    def reach(self) -> str:
        """Whether it bites realistic widths, and if not, which edge brings it back: one line."""
        if self.bites_realistic_setups is None:
            return "realistic case not run" if not self.realistic else "realistic case not supported here"
        if self.bites_realistic_setups:
            return "fails the same way at realistic widths (even splits, >= 8x the mesh, 2+ layers)"
        at = self.at_realistic_widths
        needed = self.edge_needed
        if needed is not None:
            return f"{at}; fails the same way again with {EDGES[needed.dimension]} ({needed.change})"
        if self.edge_trials:
            tried = ", ".join(EDGES[trial.dimension] for trial in self.edge_trials)
            return f"{at}; no single edge brings it back (tried: {tried})"
        edges = ", ".join(EDGES[e] for e in self.edges) or "none of the listed edges"
        return f"{at} (the shrunk case stands on: {edges})"

    @property
    def at_realistic_widths(self) -> str:
        """What the realistic case did where it did not fail the same way: it passed, or it failed another way
        (which says nothing of whether this bug is there too: the other failure came first)."""
        return PASSES_AT_REALISTIC if self.realistic == "passes" else FAILS_OTHERWISE_AT_REALISTIC

    def summary(self) -> str:
        """A few lines for ``describe``, the corpus table and bug reports."""
        needs = ", ".join(f"{label}={value}" for label, value in sorted(self.necessary.items())) or "nothing measured"
        free = ", ".join(self.free) or "none"
        cut = "" if self.complete else " (cut short: `shardfuzz explain ENTRY` finishes it)"
        return f"needs: {needs}; varies freely: {free}; {self.reach()}{cut}"
