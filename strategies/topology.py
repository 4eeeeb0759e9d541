"""World sizes and device-mesh shapes."""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from shardfuzz.strategies._helpers import check_int, check_interval, factorisations

__all__ = ["world_sizes", "mesh_shapes"]


def world_sizes(*, min_size: int = 1, max_size: int = 4) -> st.SearchStrategy[int]:
    check_interval("min_size", min_size, "max_size", max_size, minimum=1)
    return st.integers(min_size, max_size)


def mesh_shapes(*, min_size: int = 1, max_size: int = 4, max_dims: int = 1) -> st.SearchStrategy[tuple[int, ...]]:
    """Mesh shapes whose product is in ``[min_size, max_size]``: 1-D, or (up to ``max_dims=2``)
    2-D ``(replicas, shards)`` of every factorisation, 1s included. About 1 in 3 is 2-D."""
    check_int("max_dims", max_dims, minimum=1)
    if max_dims > 2:
        raise InvalidArgument(f"max_dims={max_dims!r} must be 1 or 2")
    one_d = world_sizes(min_size=min_size, max_size=max_size).map(lambda n: (n,))
    if max_dims == 1:
        return one_d
    two_d = world_sizes(min_size=min_size, max_size=max_size).flatmap(lambda n: st.sampled_from(factorisations(n)))
    return st.sampled_from([1, 1, 2]).flatmap(lambda dims: one_d if dims == 1 else two_d)
