"""Pure judges over saved versus loaded state.

Each oracle takes plain mappings of state (key -> tensor or Python value), never
models or process groups, so each is testable with hand-made tensors.

The round-trip gathers both sides to *full* tensors (``get_state_dict`` with
``full_state_dict=True`` and ``flatten_optimizer_state_dict=True``) and compares
them on rank 0: keys are engine-independent FQNs, so a checkpoint saved by
FSDP1 on 3 ranks compares directly against one loaded by FSDP2 on 2.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from shardfuzz.verdict import Mismatch

__all__ = ["compare_state", "first_bit_difference", "STATE_ORACLE"]

STATE_ORACLE = "state-equal"

_BITS_BY_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def compare_state(
    expected: Mapping[str, Any], actual: Mapping[str, Any], *, rank: int
) -> list[Mismatch]:
    """Bitwise equality of every entry; nothing missing, nothing extra.

    Tensors must agree in dtype, shape and every bit (so ``-0.0 != 0.0`` and a
    NaN equals the same NaN). Other values (hyperparameters, ``step`` ints)
    compare with ``==``, a tuple equal to a list of the same values.
    """
    found: list[Mismatch] = []
    for key in sorted(expected.keys() - actual.keys()):
        found.append(Mismatch(STATE_ORACLE, key, rank, "missing after load"))
    for key in sorted(actual.keys() - expected.keys()):
        found.append(Mismatch(STATE_ORACLE, key, rank, "not in the saved state"))
    for key in sorted(expected.keys() & actual.keys()):
        mismatch = _compare_value(key, expected[key], actual[key], rank)
        if mismatch is not None:
            found.append(mismatch)
    return found


def _compare_value(key: str, want: Any, got: Any, rank: int) -> Mismatch | None:
    if isinstance(want, torch.Tensor) or isinstance(got, torch.Tensor):
        if not (isinstance(want, torch.Tensor) and isinstance(got, torch.Tensor)):
            return Mismatch(STATE_ORACLE, key, rank, "tensor versus non-tensor",
                            expected=_short(want), actual=_short(got))
        if want.dtype != got.dtype:
            return Mismatch(STATE_ORACLE, key, rank, "dtype differs",
                            expected=str(want.dtype), actual=str(got.dtype))
        if tuple(want.shape) != tuple(got.shape):
            return Mismatch(STATE_ORACLE, key, rank, "shape differs",
                            expected=str(list(want.shape)), actual=str(list(got.shape)))
        index = first_bit_difference(want, got)
        if index is None:
            return None
        return Mismatch(STATE_ORACLE, key, rank, "values differ", index=index,
                        expected=repr(want[index].item()), actual=repr(got[index].item()))
    if _as_lists(want) != _as_lists(got):
        return Mismatch(STATE_ORACLE, key, rank, "value differs", expected=_short(want), actual=_short(got))
    return None


def _as_lists(value: Any) -> Any:
    """Tuples as lists: DCP stores param-group sequences such as Adam's ``betas`` as lists,
    which the optimizer uses exactly as it uses the tuple, so only the values count."""
    if isinstance(value, (tuple, list)):
        return [_as_lists(v) for v in value]
    return value


def first_bit_difference(a: torch.Tensor, b: torch.Tensor) -> tuple[int, ...] | None:
    """The first index (row-major) where ``a`` and ``b`` differ in any bit, or None."""
    differs = _as_bits(a) != _as_bits(b)
    if not bool(differs.any()):
        return None
    return tuple(int(i) for i in differs.nonzero()[0])


def _as_bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu().contiguous()
    if t.is_floating_point():
        return t.view(_BITS_BY_SIZE[t.element_size()]) if t.dim() else t.reshape(1).view(
            _BITS_BY_SIZE[t.element_size()]).reshape(())
    return t


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
