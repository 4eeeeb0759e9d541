"""Sharding engines and wrap policies, offered only where the installed torch has them."""

from __future__ import annotations

from hypothesis import strategies as st

from shardfuzz.capabilities import capabilities
from shardfuzz.case import FSDP1, FSDP2, Model
from shardfuzz.strategies._helpers import check_choices

__all__ = ["engines", "wrap_sets", "ENGINE_NAMES"]

ENGINE_NAMES = ("fsdp1", "fsdp2")

_BUILDERS = {
    "fsdp1": st.builds(FSDP1, use_orig_params=st.booleans()),
    "fsdp2": st.builds(FSDP2, reshard_after_forward=st.booleans()),
}


def engines(*, names=None) -> st.SearchStrategy[FSDP1 | FSDP2]:
    """An engine among ``names`` (default: every engine the installed torch offers)."""
    chosen = check_choices("names", names, capabilities().engines)
    return st.one_of(*(_BUILDERS[n] for n in chosen))


def wrap_sets(model: Model) -> st.SearchStrategy[tuple[str, ...]]:
    """Submodules (by FQN) sharded as units of their own, besides the root."""
    paths = model.submodule_paths()
    return st.lists(st.sampled_from(paths), unique=True).map(tuple)
