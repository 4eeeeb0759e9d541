"""The model tree: leaf layers, the containers that nest them, and the Model that holds the root."""

from __future__ import annotations

from typing import Union

from attrs import field, frozen
from attrs.validators import in_, instance_of

from shardfuzz.case._validators import _POSITIVE_INT


@frozen
class Linear:
    """``nn.Linear`` whose input width is the previous layer's output width.

    ``frozen``: its weight and bias have ``requires_grad=False`` (no gradient, no
    optimizer state, still in the model's state dict); left out of the JSON when False.
    """

    out_features: int = field(validator=_POSITIVE_INT)
    bias: bool = field(default=True, validator=instance_of(bool))
    frozen: bool = field(default=False, validator=instance_of(bool))


@frozen
class LayerNorm:
    """``nn.LayerNorm`` over the previous layer's width: a 1-D weight and bias."""


@frozen
class BatchNorm:
    """``nn.BatchNorm1d`` over the previous layer's width: a 1-D weight and bias, and the
    buffers ``running_mean``, ``running_var`` and the 0-D int64 ``num_batches_tracked``."""


@frozen
class Conv:
    """``nn.Conv1d``/``nn.Conv2d`` from the width to the width, applied to the features as
    channels of a length-1 signal: a 3-D (or 4-D) weight ``(width, width, k[, k])``."""

    dims: int = field(default=1, validator=in_((1, 2)))
    kernel_size: int = field(default=1, validator=in_((1, 3)))  # 3: padding 1 keeps the length
    bias: bool = field(default=True, validator=instance_of(bool))


@frozen
class Embedding:
    """``nn.Embedding(num_embeddings, input_width)``: only as the model's first leaf, which then
    takes token indices in ``[0, num_embeddings)`` instead of features."""

    num_embeddings: int = field(validator=_POSITIVE_INT)


@frozen
class Scale:
    """A 0-D parameter ``scale`` (drawn from the seed) times the input, plus a non-persistent
    buffer ``shift`` (a constant, so absent from every state dict and never loaded)."""


@frozen
class Tied:
    """Two ``nn.Linear(width, width)`` named ``a`` and ``b``, run in turn, that share one weight
    (``b.weight is a.weight``, as an LM head shares its embedding's): one parameter under two
    names, whose state dicts hold it under both. Each has its own bias if ``bias``."""

    bias: bool = field(default=True, validator=instance_of(bool))


#: The modules a tree's leaves may be; only a Linear changes the width.
LEAF_CLASSES = (Linear, LayerNorm, BatchNorm, Conv, Embedding, Scale, Tied)

#: Parameter dtypes of a whole model (``Model.dtype``); float32 unless drawn otherwise.
DTYPES = ("float32", "float64", "bfloat16")


def _non_empty(instance, attribute, value):
    if not value:
        raise ValueError(f"{type(instance).__name__} needs at least one child")


@frozen
class Sequential:
    """``nn.Sequential`` over its children (named ``0``, ``1``, ...)."""

    children: tuple[Node, ...] = field(converter=tuple, validator=_non_empty)


@frozen
class Block:
    """A custom container: children are attributes ``a``, ``b``, ... run in order."""

    children: tuple[Node, ...] = field(converter=tuple, validator=_non_empty)


Node = Union[Linear, LayerNorm, BatchNorm, Conv, Embedding, Scale, Tied, Sequential, Block]


def _sorted_unique_types(names) -> tuple[str, ...]:
    names = tuple(sorted(set(names)))
    unknown = set(names) - set(MODULE_TYPES)
    if unknown:
        raise ValueError(f"module_types {sorted(unknown)} are not among {list(MODULE_TYPES)}")
    return names


@frozen
class Model:
    """A module tree fed with inputs of width ``input_width``; the root is a container.

    ``dtype``: every parameter and buffer of floating type is cast to it (left out of
    the JSON when float32).
    """

    input_width: int = field(validator=_POSITIVE_INT)
    root: Sequential | Block = field(validator=instance_of((Sequential, Block)))
    dtype: str = field(default="float32", validator=in_(DTYPES))

    @root.validator
    def _trainable(self, attribute, value):
        if not has_trainable_linear(value):
            raise ValueError(
                "the model needs a Linear with frozen=False: training needs a gradient, "
                "and every width comes from a Linear"
            )
        later = [leaf for leaf in leaves(value)[1:] if isinstance(leaf, Embedding)]
        if later:
            raise ValueError("an Embedding may only be the model's first leaf (it takes token indices)")

    @property
    def num_embeddings(self) -> int:
        """The first leaf's vocabulary if it is an Embedding (the model takes indices), else 0."""
        first = leaves(self.root)[0]
        return first.num_embeddings if isinstance(first, Embedding) else 0

    def walk(self) -> list[tuple[str, Node, int]]:
        """Every module below the root as ``(fqn, node, input width)``, parents before children."""
        out: list[tuple[str, Node, int]] = []
        width = self.input_width

        def visit(node, path):
            nonlocal width
            if path:
                out.append((path, node, width))
            if isinstance(node, Linear):
                width = node.out_features
            elif not isinstance(node, LEAF_CLASSES):
                for name, child in child_items(node):
                    visit(child, f"{path}.{name}" if path else name)

        visit(self.root, "")
        return out

    def linear_nodes(self) -> list[tuple[str, Linear]]:
        """Every Linear as ``(fqn, node)`` in forward order."""
        return [(fqn, node) for fqn, node, _ in self.walk() if isinstance(node, Linear)]

    def frozen_paths(self) -> list[str]:
        """FQNs of the frozen Linears."""
        return [fqn for fqn, node in self.linear_nodes() if node.frozen]

    def linears(self) -> list[tuple[str, int, int, bool]]:
        """Every Linear as ``(fqn, in_features, out_features, bias)`` in forward order."""
        return [
            (fqn, width, node.out_features, node.bias) for fqn, node, width in self.walk() if isinstance(node, Linear)
        ]

    def norms(self) -> list[tuple[str, str, int]]:
        """Every norm layer as ``(fqn, class name, width)`` in forward order."""
        return [
            (fqn, type(node).__name__, width)
            for fqn, node, width in self.walk()
            if isinstance(node, (LayerNorm, BatchNorm))
        ]

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{parameter fqn: shape}`` of the unsharded model (buffers not included)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for fqn, node, width in self.walk():
            if isinstance(node, Linear):
                shapes[f"{fqn}.weight"] = (node.out_features, width)
                if node.bias:
                    shapes[f"{fqn}.bias"] = (node.out_features,)
            elif isinstance(node, (LayerNorm, BatchNorm)):
                shapes[f"{fqn}.weight"] = shapes[f"{fqn}.bias"] = (width,)
            elif isinstance(node, Conv):
                shapes[f"{fqn}.weight"] = (width, width) + (node.kernel_size,) * node.dims
                if node.bias:
                    shapes[f"{fqn}.bias"] = (width,)
            elif isinstance(node, Embedding):
                shapes[f"{fqn}.weight"] = (node.num_embeddings, width)
            elif isinstance(node, Scale):
                shapes[f"{fqn}.scale"] = ()
            elif isinstance(node, Tied):  # the shared weight once, under its first name
                shapes[f"{fqn}.a.weight"] = (width, width)
                if node.bias:
                    shapes[f"{fqn}.a.bias"] = shapes[f"{fqn}.b.bias"] = (width,)
        return shapes

    def leaf_kinds(self) -> set[str]:
        """The class names of the leaves (``Conv`` as ``Conv1d``/``Conv2d``)."""
        return {
            f"Conv{node.dims}d" if isinstance(node, Conv) else type(node).__name__
            for _, node, _ in self.walk()
            if isinstance(node, LEAF_CLASSES)
        }

    @property
    def output_width(self) -> int:
        return self.linears()[-1][2]

    @property
    def has_batch_norm(self) -> bool:
        return any(name == "BatchNorm" for _, name, _ in self.norms())

    def submodule_paths(self) -> list[str]:
        """FQNs of every module below the root, parents before children."""
        return [fqn for fqn, _, _ in self.walk()]

    def depth(self) -> int:
        def d(node):
            return 1 if isinstance(node, LEAF_CLASSES) else 1 + max(d(c) for c in node.children)

        return d(self.root)


def leaves(node) -> list[Node]:
    """The leaf modules under ``node`` (itself, if it is one), in forward order."""
    if isinstance(node, LEAF_CLASSES):
        return [node]
    return [leaf for child in node.children for leaf in leaves(child)]


def has_trainable_linear(node) -> bool:
    """Whether a Linear under ``node`` has ``frozen=False`` (training needs a gradient)."""
    return any(isinstance(leaf, Linear) and not leaf.frozen for leaf in leaves(node))


def child_items(node: Sequential | Block) -> list[tuple[str, Node]]:
    """The (attribute name, child) pairs a container is built with."""
    if isinstance(node, Sequential):
        return [(str(i), c) for i, c in enumerate(node.children)]
    return [(_block_name(i), c) for i, c in enumerate(node.children)]


def _block_name(i: int) -> str:
    name = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        name = chr(ord("a") + r) + name
    return name


#: The module class names a ``module-type`` wrap policy (``FSDP1.module_types``) may name.
MODULE_TYPES = (
    "Linear",
    "Sequential",
    "Block",
    "LayerNorm",
    "BatchNorm",
    "Conv1d",
    "Conv2d",
    "Embedding",
    "Scale",
    "Tied",
)
