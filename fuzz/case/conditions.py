"""Conditions on a case's labelled dimensions (``dimensions``): what a known bug's ``when``, an explanation's
measured conditions and a steering mask are made of.

A condition maps a label to the value a case must have there, or to several values joined by ``|`` where
any of them will do ("adam|adamw": the failure was measured with both, and passes with the others). The
joined form keeps ``when`` a plain JSON object of strings that a person can read and narrow by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

__all__ = ["ANY_OF", "allowed", "compatible", "generalize", "meets", "one_of", "wider_than"]

ANY_OF = "|"


def allowed(value: str) -> frozenset[str]:
    """The values a condition's ``value`` admits."""
    return frozenset(value.split(ANY_OF))


def one_of(values: Iterable[str]) -> str:
    """The condition admitting each of ``values`` (sorted, so that equal sets read the same)."""
    return ANY_OF.join(sorted(set(values)))


def meets(dims: Mapping[str, str], conditions: Mapping[str, str]) -> bool:
    """Whether a case with dimensions ``dims`` meets every one of ``conditions``."""
    return all(dims.get(label) in allowed(value) for label, value in conditions.items())


def compatible(first: Mapping[str, str], second: Mapping[str, str]) -> bool:
    """Whether one case could meet both sets of conditions (no label where they admit disjoint values)."""
    return all(allowed(value) & allowed(second[label]) for label, value in first.items() if label in second)


def wider_than(conditions: Mapping[str, str], measured: Mapping[str, str]) -> list[str]:
    """The labels of ``measured`` that ``conditions`` leave out or admit more values at than measured."""
    return sorted(
        label
        for label, value in measured.items()
        if label not in conditions or not allowed(conditions[label]) <= allowed(value)
    )


def generalize(conditions: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """The conditions of one bug found as several entries, each with its own measured conditions: a label
    stays only where every entry constrains it, admitting every value they admit. A label at which the
    entries each need one value, but different ones, goes: the failure needs no one value there (a one-step
    neighbour measures a value against the others, e.g. a world size that makes a layer narrower than the
    mesh; another entry shows another value doing the same)."""
    if not conditions:
        return {}
    general = {}
    for label in sorted(set(conditions[0]).intersection(*conditions[1:])):  # in order: a mask's picks break ties by it
        values = [allowed(each[label]) for each in conditions]
        if all(len(admits) == 1 for admits in values) and len(set(values)) > 1:
            continue
        general[label] = one_of(frozenset().union(*values))
    return general
