"""Tensors compared bit for bit, or within a tolerance: the oracles' primitives, shared with exported scripts.

``oracles.py`` judges with these on rank 0, and ``export`` copies their definitions
into every exported script, so a script's verdict rests on the same comparison. Like
``rank_steps``, this module imports only ``torch`` at its top.
"""

from __future__ import annotations

import torch

__all__ = ["as_bits", "as_lists", "first_bit_difference", "first_difference_beyond"]


def as_bits(t: torch.Tensor) -> torch.Tensor:
    """A floating tensor viewed as integers of its size (so ``-0.0 != 0.0`` and a NaN equals the same NaN)."""
    t = t.detach().cpu().contiguous()
    if not t.is_floating_point():
        return t
    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.view(bits) if t.dim() else t.reshape(1).view(bits).reshape(())


def as_lists(value: object) -> object:
    """Tuples as lists: DCP stores param-group sequences such as Adam's ``betas`` as lists,
    which the optimizer uses exactly as it uses the tuple, so only the values count."""
    if isinstance(value, (tuple, list)):
        return [as_lists(v) for v in value]
    return value


def first_bit_difference(a: torch.Tensor, b: torch.Tensor) -> tuple[int, ...] | None:
    """The first index (row-major) where ``a`` and ``b`` differ in any bit, or None."""
    differs = as_bits(a) != as_bits(b)
    if not bool(differs.any()):
        return None
    return tuple(int(i) for i in differs.nonzero()[0])


def first_difference_beyond(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> tuple[int, ...] | None:
    """The first index where ``|a - b| > atol + rtol * |b|`` (NaN against non-NaN counts), or None."""
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    differs = ~torch.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
    if not bool(differs.any()):
        return None
    return tuple(int(i) for i in differs.nonzero()[0]) if a.dim() else ()
