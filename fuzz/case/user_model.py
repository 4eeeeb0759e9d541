"""The user's own model as a Case's model: ``shardfuzz run --model package.module:factory``.

``UserModel`` is plain data (the factory's import path); what the rest of shardfuzz asks of a
model (its parameter shapes, its submodules, its Linears, whether it keeps BatchNorm statistics)
comes from building the factory's module once on the meta device (``shardfuzz.rank.model_factory.probe``).
This package imports nothing torch-side: the package's root (``shardfuzz/__init__.py``) hands it that
probe through ``use_shape_probe`` when shardfuzz is imported. The strategies draw everything
but the model around it: engines, wrap sets from its submodules, meshes, state-dict types,
options, optimizers, steps; the shrinker shrinks those and leaves the model as it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from attrs import field, frozen

__all__ = ["FACTORY_PATTERN", "UserModel", "use_shape_probe"]

#: factory -> its shape (``rank.model_factory.ModelShape``); installed by ``use_shape_probe``.
_shape_probe: list[Callable[[str], Any]] = []


def use_shape_probe(probe: Callable[[str], Any]) -> None:
    """Answer what shardfuzz asks of a ``UserModel`` with ``probe(factory)``."""
    _shape_probe[:] = [probe]


#: ``package.module:function`` (dotted on both sides of the colon).
FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def _factory_spec(instance, attribute, value):
    if not isinstance(value, str) or not FACTORY_PATTERN.match(value):
        raise ValueError(f"factory must be 'package.module:function', got {value!r}")


@frozen
class UserModel:
    """A model made by the user's ``factory`` (``"package.module:function"``), which returns an
    ``nn.Module`` with an ``example_batch(batch_size, generator)`` method, or a pair ``(module,
    make_batch)`` where ``make_batch(batch_size, generator)`` is that function; either returns the
    input (a tensor, or a tuple of the forward's arguments) drawn on the CPU from the generator."""

    factory: str = field(validator=_factory_spec)

    def _shape(self):
        if not _shape_probe:
            raise RuntimeError("no shape probe for user models: import shardfuzz (its root installs one)")
        return _shape_probe[0](self.factory)

    # What the rest of shardfuzz asks of a model (``tree.Model`` answers the same).
    @property
    def dtype(self) -> str:
        return self._shape().dtype

    @property
    def input_width(self) -> int:
        return 0  # the batch comes from the user's function

    @property
    def num_embeddings(self) -> int:
        return 0

    @property
    def has_batch_norm(self) -> bool:
        return self._shape().has_batch_norm

    @property
    def output_width(self) -> int:
        linears = self.linears()
        return linears[-1][2] if linears else 0

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shape().parameter_shapes)

    def submodule_paths(self) -> list[str]:
        return list(self._shape().submodule_paths)

    def leaf_paths(self) -> list[str]:
        return list(self._shape().leaf_paths)

    def linears(self) -> list[tuple[str, int, int, bool]]:
        return list(self._shape().linears)

    def linear_nodes(self) -> list[tuple[str, None]]:
        return [(fqn, None) for fqn, *_ in self._shape().linears]

    def experts_nodes(self) -> list[tuple[str, None]]:
        return []  # a user's model is split by its own code, not by a drawn plan

    def frozen_paths(self) -> list[str]:
        return list(self._shape().frozen_paths)

    def norms(self) -> list[tuple[str, str, int]]:
        return []

    def leaf_kinds(self) -> set[str]:
        return set(self._shape().leaf_kinds)

    def depth(self) -> int:
        return self._shape().depth

    def describe(self) -> str:
        shape = self._shape()
        count = sum(_numel(s) for s in shape.parameter_shapes.values())
        return f"{self.factory} ({len(shape.parameter_shapes)} parameters, {count} elements)"


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for size in shape:
        n *= size
    return n
