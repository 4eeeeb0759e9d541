"""Argument checks shared by the strategy modules (raise ``InvalidArgument`` up front), and weighted choice."""

from __future__ import annotations

from typing import TypeVar

import hypothesis.strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.strategies import SearchStrategy

T = TypeVar("T")


def check_int(name: str, value, *, minimum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name}={value!r} must be an int")
    if minimum is not None and value < minimum:
        raise InvalidArgument(f"{name}={value!r} must be at least {minimum}")


def check_interval(low_name: str, low, high_name: str, high, *, minimum: int) -> None:
    check_int(low_name, low, minimum=minimum)
    check_int(high_name, high, minimum=minimum)
    if low > high:
        raise InvalidArgument(f"{low_name}={low!r} must not exceed {high_name}={high!r}")


def factorisations(n: int, *, min_shards: int = 1) -> list[tuple[int, int]]:
    """Every 2-D mesh shape ``(replicas, shards)`` of ``n`` ranks with at least ``min_shards`` shards."""
    return [(r, n // r) for r in range(1, n + 1) if n % r == 0 and n // r >= min_shards]


def check_choices(name: str, values, offered: tuple[str, ...]) -> tuple[str, ...]:
    """``values`` (None means all offered) as a non-empty tuple of offered names."""
    if values is None:
        values = offered
    values = tuple(values)
    if not values:
        raise InvalidArgument(f"{name} must name at least one of {list(offered)}")
    unknown = [v for v in values if v not in offered]
    if unknown:
        raise InvalidArgument(f"{name}: {unknown} not offered here (offered: {list(offered)})")
    return values


def weighted(*choices: tuple[int, SearchStrategy[T]]) -> SearchStrategy[T]:
    """One of the strategies, each in proportion to its weight; shrinks toward the first.

    ``st.one_of`` drops a branch it already holds (the same strategy object, and Hypothesis caches strategies built
    from hashable arguments), so repeating a strategy there does not weight it: ``one_of(linear, linear, leaf)``
    draws ``linear`` half the time, not two thirds."""
    for weight, _ in choices:
        check_int("weight", weight, minimum=1)
    indices = [i for i, (weight, _) in enumerate(choices) for _ in range(weight)]
    return st.sampled_from(indices).flatmap(lambda i: choices[i][1])
