"""The module classes a case's model is built from that are no torch class as they stand.

One definition for two users: ``build.build_module`` makes them on the pool's ranks,
and ``export`` copies this file's definitions into every exported script. So this
module imports only what such a script imports at its top (``torch``, ``nn``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Block", "Conv1dLeaf", "Conv2dLeaf", "ScaleLeaf", "TiedLeaf", "layer_class"]


class Block(nn.Module):
    """A custom container (not ``nn.Sequential``): named children applied in order."""

    def __init__(self, children: list[tuple[str, nn.Module]]):
        super().__init__()
        self._order = [name for name, _ in children]
        for name, child in children:
            self.add_module(name, child)

    def forward(self, x):
        for name in self._order:
            x = getattr(self, name)(x)
        return x


class Conv1dLeaf(nn.Conv1d):
    """``nn.Conv1d`` on a batch of features: the features are the channels of a length-1 signal."""

    def forward(self, x):
        return super().forward(x.unsqueeze(-1)).squeeze(-1)


class Conv2dLeaf(nn.Conv2d):
    """``nn.Conv2d`` on a batch of features: the features are the channels of a 1x1 image."""

    def forward(self, x):
        return super().forward(x[..., None, None]).flatten(1)


class ScaleLeaf(nn.Module):
    """A 0-D parameter times the input, plus a non-persistent buffer (in no state dict)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(()) + 0.5)  # from the seed: loading has work to do
        self.register_buffer("shift", torch.tensor(0.25), persistent=False)

    def forward(self, x):
        return x * self.scale + self.shift


class TiedLeaf(nn.Module):
    """Two width-to-width Linears ``a`` then ``b`` that share one weight (tied weights)."""

    def __init__(self, width, bias):
        super().__init__()
        self.a = nn.Linear(width, width, bias=bias)
        self.b = nn.Linear(width, width, bias=bias)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(self.a(x))


def layer_class(name: str) -> type:
    """The class a leaf kind names (``case.tree``'s ``Layer.cls``): ``nn.X`` is torch's, else one above."""
    return getattr(nn, name[3:]) if name.startswith("nn.") else globals()[name]
