"""The model tree: the containers that nest leaf layers, and the Model that holds the root."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Union

from attrs import field, frozen
from attrs.validators import in_, instance_of

from shardfuzz.case._validators import _POSITIVE_INT
from shardfuzz.case.leaf_kinds import LEAF_CLASSES, BatchNorm, Embedding, Experts, LayerNorm, Leaf, Linear

#: Parameter dtypes of a whole model (``Model.dtype``); float32 unless drawn otherwise.
DTYPES = ("float32", "float64", "bfloat16")


def _nodes(children: Iterable[Node]) -> tuple[Node, ...]:
    return tuple(children)


def _non_empty(instance, attribute, value):
    if not value:
        raise ValueError(f"{type(instance).__name__} needs at least one child")


@frozen
class Sequential:
    """``nn.Sequential`` over its children (named ``0``, ``1``, ...)."""

    children: tuple[Node, ...] = field(converter=_nodes, validator=_non_empty)


@frozen
class Block:
    """A custom container: children are attributes ``a``, ``b``, ... run in order."""

    children: tuple[Node, ...] = field(converter=_nodes, validator=_non_empty)


#: A tree node: a leaf of any registered kind, or a container (cattrs tags each with its class name).
if TYPE_CHECKING:  # to a type checker a leaf is a Leaf; cattrs needs the registry's classes
    Node = Union[Leaf, "Sequential", "Block"]
else:
    Node = Union[LEAF_CLASSES + (Sequential, Block)]


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
            if isinstance(node, Leaf):
                width = node.output_width(width)
            else:
                for name, child in child_items(node):
                    visit(child, f"{path}.{name}" if path else name)

        visit(self.root, "")
        return out

    def linear_nodes(self) -> list[tuple[str, Linear]]:
        """Every Linear as ``(fqn, node)`` in forward order."""
        return [(fqn, node) for fqn, node, _ in self.walk() if isinstance(node, Linear)]

    def experts_nodes(self) -> list[tuple[str, Experts]]:
        """Every mixture-of-experts leaf (``Experts``: what expert parallelism splits) as ``(fqn, node)`` in forward
        order."""
        return [(fqn, node) for fqn, node, _ in self.walk() if isinstance(node, Experts)]

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
            if isinstance(node, Leaf):
                shapes.update({f"{fqn}.{name}": shape for name, shape in node.parameter_shapes(width).items()})
        return shapes

    def leaf_kinds(self) -> set[str]:
        """The kinds of the leaves (``Leaf.kind``: ``Conv`` as ``Conv1d``/``Conv2d``)."""
        return {node.kind for node in leaves(self.root)}

    @property
    def output_width(self) -> int:
        return self.linears()[-1][2]

    @property
    def has_batch_norm(self) -> bool:
        """Whether a leaf keeps running statistics (``Leaf.running_statistics``: BatchNorm's)."""
        return any(leaf.running_statistics for leaf in leaves(self.root))

    def leaf_paths(self) -> list[str]:
        """FQNs of the leaves, in forward order."""
        return [fqn for fqn, node, _ in self.walk() if isinstance(node, Leaf)]

    def submodule_paths(self) -> list[str]:
        """FQNs of every module below the root, parents before children."""
        return [fqn for fqn, _, _ in self.walk()]

    def depth(self) -> int:
        def d(node):
            return 1 if isinstance(node, Leaf) else 1 + max(d(c) for c in node.children)

        return d(self.root)


def leaves(node) -> list[Leaf]:
    """The leaf modules under ``node`` (itself, if it is one), in forward order."""
    if isinstance(node, Leaf):
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


#: The containers' module types (``Sequential`` is torch's, ``Block`` a class of ``layers.py``).
CONTAINER_MODULE_TYPES = {"Sequential": "nn.Sequential", "Block": "Block"}

#: ``FSDP1.module_types`` name -> the class it is built as, for every kind. The order is the one
#: strategies draw from (the first leaf kind's, the containers', the other kinds'): kept, so that a
#: seed draws the same cases as before the registry.
MODULE_TYPE_CLASSES: dict[str, str] = {
    **LEAF_CLASSES[0].module_types,
    **CONTAINER_MODULE_TYPES,
    **{name: cls for kind in LEAF_CLASSES[1:] for name, cls in kind.module_types.items()},
}

#: The module class names a ``module-type`` wrap policy (``FSDP1.module_types``) may name.
MODULE_TYPES = tuple(MODULE_TYPE_CLASSES)
