"""World sizes and device-mesh shapes."""

from __future__ import annotations

from hypothesis import strategies as st

from shardfuzz.strategies._helpers import check_interval

__all__ = ["world_sizes", "mesh_shapes"]


def world_sizes(*, min_size: int = 1, max_size: int = 4) -> st.SearchStrategy[int]:
    check_interval("min_size", min_size, "max_size", max_size, minimum=1)
    return st.integers(min_size, max_size)


def mesh_shapes(*, min_size: int = 1, max_size: int = 4) -> st.SearchStrategy[tuple[int, ...]]:
    """Mesh shapes whose product is in ``[min_size, max_size]``; 1-D for now."""
    return world_sizes(min_size=min_size, max_size=max_size).map(lambda n: (n,))
