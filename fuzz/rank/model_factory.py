"""Import, check and build the user's model factory (``case.UserModel``).

``probe`` builds the factory's module once on the meta device (no memory, no values) and keeps
what shardfuzz asks of a model: parameter shapes, submodules, Linears, frozen modules, whether it
keeps BatchNorm statistics, and the function that draws its inputs. ``build`` makes it for real on a rank, seeded, and ``batch_maker``
gives the function that draws its inputs. The current directory is put on ``sys.path`` first (as
``python -m`` does), so ``--model mypackage.models:small`` finds a package beside the command;
the ranks inherit that path.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable

from attrs import frozen

__all__ = ["ModelShape", "UserModelError", "batch_maker", "build", "probe"]


class UserModelError(ValueError):
    """A model factory that cannot be used; the message names the factory and what is wrong."""


@frozen
class ModelShape:
    parameter_shapes: dict[str, tuple[int, ...]]
    submodule_paths: tuple[str, ...]
    leaf_paths: tuple[str, ...]  # modules holding parameters of their own
    linears: tuple[tuple[str, int, int, bool], ...]
    frozen_paths: tuple[str, ...]
    leaf_kinds: tuple[str, ...]
    has_batch_norm: bool
    dtype: str
    depth: int
    make_batch: Callable  # draws the model's inputs: make_batch(batch_size, generator)


def _factory(spec: str) -> Callable:
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserModelError(f"--model {spec}: cannot import {module_name!r}: {exc}") from None
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise UserModelError(f"--model {spec}: {module_name!r} has no attribute {attribute!r}")
    if not callable(target):
        raise UserModelError(f"--model {spec}: {attribute!r} is not callable")
    return target


def _made(spec: str, made) -> tuple:
    """``(module, make_batch)`` from what the factory returned, or a ``UserModelError`` saying why not."""
    import torch.nn as nn

    module, make_batch = made if isinstance(made, tuple) and len(made) == 2 else (made, None)
    if not isinstance(module, nn.Module):
        raise UserModelError(
            f"--model {spec}: the factory returned {type(module).__name__}, not an nn.Module "
            "(or a pair (module, make_batch))"
        )
    make_batch = make_batch or getattr(module, "example_batch", None)
    if not callable(make_batch):
        raise UserModelError(
            f"--model {spec}: no way to make an input batch: give the module an example_batch(batch_size, "
            "generator) method, or return (module, make_batch) from the factory"
        )
    if not any(p.requires_grad for p in module.parameters()):
        raise UserModelError(f"--model {spec}: the module has no trainable parameter (training needs a gradient)")
    return module, make_batch


@functools.cache
def probe(spec: str) -> ModelShape:
    """The factory's module built on the meta device, as a ``ModelShape`` (cached per factory)."""
    import torch
    import torch.nn as nn

    factory = _factory(spec)
    try:
        with torch.device("meta"):
            made = factory()
    except Exception as exc:
        raise UserModelError(f"--model {spec}: the factory raised {type(exc).__name__}: {exc}") from exc
    module, make_batch = _made(spec, made)
    named = [(name, sub) for name, sub in module.named_modules() if name]
    own = {name: list(sub.parameters(recurse=False)) for name, sub in named}
    floating = [p.dtype for p in module.parameters() if p.is_floating_point()]

    def depth(sub) -> int:
        children = list(sub.children())
        return 1 + max((depth(c) for c in children), default=0) if children else 1

    return ModelShape(
        parameter_shapes={name: tuple(p.shape) for name, p in module.named_parameters()},
        submodule_paths=tuple(name for name, _ in named),
        leaf_paths=tuple(name for name, params in own.items() if params),
        linears=tuple(
            (name, sub.in_features, sub.out_features, sub.bias is not None)
            for name, sub in named
            if isinstance(sub, nn.Linear)
        ),
        frozen_paths=tuple(name for name, params in own.items() if params and not any(p.requires_grad for p in params)),
        leaf_kinds=tuple(sorted({type(sub).__name__ for name, sub in named if own[name]})),
        has_batch_norm=any(isinstance(sub, nn.modules.batchnorm._BatchNorm) for _, sub in named),
        dtype=str(floating[0]).removeprefix("torch.") if floating else "float32",
        depth=max((depth(sub) for _, sub in named), default=0),
        make_batch=make_batch,
    )


def build(spec: str, *, seed: int):
    """The factory's module, made on the CPU after ``torch.manual_seed(seed)`` (the same on every rank)."""
    import torch

    torch.manual_seed(seed)
    return _made(spec, _factory(spec)())[0]


def batch_maker(spec: str) -> Callable:
    """The function drawing the model's inputs: ``make_batch(batch_size, generator)`` (from ``probe``'s build)."""
    return probe(spec).make_batch
