"""State-dict kinds and options, optimizers and their steps."""

from __future__ import annotations

from hypothesis import strategies as st

from shardfuzz.capabilities import capabilities
from shardfuzz.case import SGD, STATE_DICT_TYPES, Adam
from shardfuzz.strategies._helpers import check_int

__all__ = ["state_dict_types", "flatten_optimizer_state_dict", "optimizers", "optimizer_steps"]


def state_dict_types() -> st.SearchStrategy[str]:
    return st.sampled_from(STATE_DICT_TYPES)


def flatten_optimizer_state_dict() -> st.SearchStrategy[bool]:
    """``StateDictOptions.flatten_optimizer_state_dict``; always True where torch lacks the field."""
    return st.booleans() if capabilities().flatten_optimizer_state_dict else st.just(True)


def optimizers() -> st.SearchStrategy[SGD | Adam]:
    """SGD with momentum and Adam, with their default hyperparameters."""
    return st.sampled_from([SGD(), Adam()])


def optimizer_steps(*, max_steps: int = 3) -> st.SearchStrategy[int]:
    check_int("max_steps", max_steps, minimum=0)
    return st.integers(0, max_steps)
