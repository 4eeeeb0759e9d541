"""Argument checks shared by the strategy modules (raise ``InvalidArgument`` up front)."""

from __future__ import annotations

from hypothesis.errors import InvalidArgument


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
