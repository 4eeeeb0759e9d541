"""Validators and converters shared by the Case data model's modules."""

from __future__ import annotations

from collections.abc import Iterable

from attrs.validators import ge, instance_of

_POSITIVE_INT = [instance_of(int), ge(1)]  # attrs names the field in its messages


def ints(values: Iterable[int]) -> tuple[int, ...]:
    """A converter: any iterable of ints as a tuple (typed, so that type checkers accept lists)."""
    return tuple(values)


def strings(values: Iterable[str]) -> tuple[str, ...]:
    """A converter: any iterable of strings as a tuple."""
    return tuple(values)
