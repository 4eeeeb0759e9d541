"""The model tree: leaf layers, the containers that nest them, and the Model that holds the root."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar, NamedTuple, Union

from attrs import evolve, field, frozen
from attrs.validators import in_, instance_of

from shardfuzz.case._validators import _POSITIVE_INT


class LayerCall(NamedTuple):
    """How a leaf is built: ``cls(*args, **kwargs)``, then ``requires_grad_(False)`` if ``frozen``.

    ``cls`` is ``nn.<Name>`` for a torch class or the name of a class of ``layers.py``. The
    ranks build from it (``build.build_module``) and exported scripts spell it out (``export``)."""

    cls: str
    args: tuple = ()
    kwargs: dict = {}  # noqa: RUF012 (a NamedTuple default, never mutated)
    frozen: bool = False


class Leaf:
    """What every leaf kind says about itself; the kinds are the classes of ``LEAF_CLASSES``.

    A new kind is one ``@frozen`` subclass here (its fields are its JSON), listed in
    ``LEAF_CLASSES``, plus its draw in ``strategies/modules.py``: the ranks, exported
    scripts, descriptions, shrinking, coverage labels and FSDP1's module-type policy all
    read it from these methods and class attributes.
    """

    __slots__ = ()

    #: ``FSDP1.module_types`` names this kind gives -> the class it is built as (``LayerCall.cls``).
    module_types: ClassVar[dict[str, str]] = {}
    #: The coverage dimension it counts in and its label there per kind name (``kind``): a dimension
    #: whose every label is ``true`` reads true/false, else none / the one label present / both.
    coverage: ClassVar[tuple[str, dict[str, str]] | None] = None
    #: Buffers each rank updates from its own batches (BatchNorm's running statistics): a model with
    #: one trains on the same batch on every rank, or its ranks would legitimately differ.
    running_statistics: ClassVar[bool] = False

    @property
    def kind(self) -> str:
        """Its name in ``Model.leaf_kinds`` and unsupported rules."""
        return type(self).__name__

    def layer(self, width: int) -> LayerCall:
        """The module fed ``width`` features."""
        raise NotImplementedError

    def output_width(self, width: int) -> int:
        """The width it outputs when fed ``width`` (only a Linear changes it)."""
        return width

    def parameter_shapes(self, width: int) -> dict[str, tuple[int, ...]]:
        """``{name below the leaf: shape}`` of its parameters (a shared one once, under its first name)."""
        raise NotImplementedError

    def describe(self, width: int) -> str:
        """The leaf in a one-line case description."""
        return f"{type(self).__name__}({width})"

    def simpler(self) -> tuple[Leaf, ...]:
        """One-step-simpler leaves of the same kind, for the greedy shrink."""
        return ()


@frozen
class Linear(Leaf):
    """``nn.Linear`` whose input width is the previous layer's output width.

    ``frozen``: its weight and bias have ``requires_grad=False`` (no gradient, no
    optimizer state, still in the model's state dict); left out of the JSON when False.
    """

    out_features: int = field(validator=_POSITIVE_INT)
    bias: bool = field(default=True, validator=instance_of(bool))
    frozen: bool = field(default=False, validator=instance_of(bool))

    module_types: ClassVar[dict[str, str]] = {"Linear": "nn.Linear"}

    def layer(self, width: int) -> LayerCall:
        return LayerCall("nn.Linear", (width, self.out_features), {"bias": self.bias}, frozen=self.frozen)

    def output_width(self, width: int) -> int:
        return self.out_features

    def parameter_shapes(self, width: int) -> dict[str, tuple[int, ...]]:
        return {"weight": (self.out_features, width), **({"bias": (self.out_features,)} if self.bias else {})}

    def describe(self, width: int) -> str:
        return f"{width}->{self.out_features}{'' if self.bias else ' nobias'}{' frozen' if self.frozen else ''}"

    def simpler(self) -> tuple[Leaf, ...]:
        narrower = tuple(
            evolve(self, out_features=w) for w in sorted({1, self.out_features // 2} - {0, self.out_features})
        )
        return narrower + ((evolve(self, frozen=False),) if self.frozen else ())


@frozen
class LayerNorm(Leaf):
    """``nn.LayerNorm`` over the previous layer's width: a 1-D weight and bias."""

    module_types: ClassVar[dict[str, str]] = {"LayerNorm": "nn.LayerNorm"}
    coverage: ClassVar[tuple[str, dict[str, str]] | None] = ("norms", {"LayerNorm": "layer"})

    def layer(self, width: int) -> LayerCall:
        return LayerCall("nn.LayerNorm", (width,))

    def parameter_shapes(self, width: int) -> dict[str, tuple[int, ...]]:
        return {"weight": (width,), "bias": (width,)}


@frozen
class BatchNorm(Leaf):
    """``nn.BatchNorm1d`` over the previous layer's width: a 1-D weight and bias, and the
    buffers ``running_mean``, ``running_var`` and the 0-D int64 ``num_batches_tracked``."""

    module_types: ClassVar[dict[str, str]] = {"BatchNorm": "nn.BatchNorm1d"}
    coverage: ClassVar[tuple[str, dict[str, str]] | None] = ("norms", {"BatchNorm": "batch"})
    running_statistics: ClassVar[bool] = True

    def layer(self, width: int) -> LayerCall:
        return LayerCall("nn.BatchNorm1d", (width,))

    def parameter_shapes(self, width: int) -> dict[str, tuple[int, ...]]:
        return {"weight": (width,), "bias": (width,)}


@frozen
class Conv(Leaf):
    """``nn.Conv1d``/``nn.Conv2d`` from the width to the width, applied to the features as
    channels of a length-1 signal: a 3-D (or 4-D) weight ``(width, width, k[, k])``."""

    dims: int = field(default=1, validator=in_((1, 2)))
    kernel_size: int = field(default=1, validator=in_((1, 3)))  # 3: padding 1 keeps the length
    bias: bool = field(default=True, validator=instance_of(bool))

    module_types: ClassVar[dict[str, str]] = {"Conv1d": "Conv1dLeaf", "Conv2d": "Conv2dLeaf"}
    coverage: ClassVar[tuple[str, dict[str, str]] | None] = ("conv", {"Conv1d": "1d", "Conv2d": "2d"})

    @property
    def kind(self) -> str:
        return f"Conv{self.dims}d"

    def layer(self, width: int) -> LayerCall:
        return LayerCall(
            f"Conv{self.dims}dLeaf",
            (width, width, self.kernel_size),
            {"padding": self.kernel_size // 2, "bias": self.bias},
        )

    def parameter_shapes(self, width: int) -> dict[str, tuple[int, ...]]:
        weight = (width, width) + (self.kernel_size,) * self.dims
        return {"weight": weight, **({"bias": (width,)} if self.bias else {})}

    def simpler(self) -> tuple[Leaf, ...]:
        return (Conv(),) if self != Conv() else ()


@frozen
class Embedding(Leaf):
    """``nn.Embedding(num_embeddings, input_width)``: only as the model's first leaf, which then
    takes token indices in ``[0, num_embeddings)`` instead of features."""

    num_embeddings: int = field(validator=_POSITIVE_INT)

    module_types: ClassVar[dict[str, str]] = {"Embedding": "nn.Embedding"}
    coverage: ClassVar[tuple[str, dict[str, str]] | None] = ("embedding", {"Embedding": "true"})

    def layer(self, width: int) -> LayerCall:
        return LayerCall("nn.Embedding", (self.num_embeddings, width))

    def parameter_shapes(self, width: int) -> dict[str, tuple[int, ...]]:
        return {"weight": (self.num_embeddings, width)}

    def simpler(self) -> tuple[Leaf, ...]:
        return (Embedding(1),) if self.num_embeddings > 1 else ()


@frozen
class Scale(Leaf):
    """A 0-D parameter ``scale`` (drawn from the seed) times the input, plus a non-persistent
    buffer ``shift`` (a constant, so absent from every state dict and never loaded)."""

    module_types: ClassVar[dict[str, str]] = {"Scale": "ScaleLeaf"}
    coverage: ClassVar[tuple[str, dict[str, str]] | None] = ("scalar_parameter", {"Scale": "true"})

    def layer(self, width: int) -> LayerCall:
        return LayerCall("ScaleLeaf")

    def parameter_shapes(self, width: int) -> dict[str, tuple[int, ...]]:
        return {"scale": ()}


@frozen
class Tied(Leaf):
    """Two ``nn.Linear(width, width)`` named ``a`` and ``b``, run in turn, that share one weight
    (``b.weight is a.weight``, as an LM head shares its embedding's): one parameter under two
    names, whose state dicts hold it under both. Each has its own bias if ``bias``."""

    bias: bool = field(default=True, validator=instance_of(bool))

    module_types: ClassVar[dict[str, str]] = {"Tied": "TiedLeaf"}
    coverage: ClassVar[tuple[str, dict[str, str]] | None] = ("tied", {"Tied": "true"})

    def layer(self, width: int) -> LayerCall:
        return LayerCall("TiedLeaf", (width,), {"bias": self.bias})

    def parameter_shapes(self, width: int) -> dict[str, tuple[int, ...]]:
        biases = {"a.bias": (width,), "b.bias": (width,)} if self.bias else {}
        return {"a.weight": (width, width), **biases}


@frozen
class RMSNorm(Leaf):
    """``nn.RMSNorm`` over the previous layer's width, as transformer blocks normalise (Llama's): a
    1-D weight and no bias."""

    module_types: ClassVar[dict[str, str]] = {"RMSNorm": "nn.RMSNorm"}
    coverage: ClassVar[tuple[str, dict[str, str]] | None] = ("rms_norm", {"RMSNorm": "true"})

    def layer(self, width: int) -> LayerCall:
        return LayerCall("nn.RMSNorm", (width,))

    def parameter_shapes(self, width: int) -> dict[str, tuple[int, ...]]:
        return {"weight": (width,)}


def _divides_heads(instance, attribute, value):
    if instance.heads % value:
        raise ValueError(f"kv_heads {value} must divide heads {instance.heads} (each kv head serves a group)")


def _attention_shapes(width: int, heads: int, kv_heads: int, head_dim: int) -> dict[str, tuple[int, ...]]:
    return {
        "wq.weight": (heads * head_dim, width),
        "wk.weight": (kv_heads * head_dim, width),
        "wv.weight": (kv_heads * head_dim, width),
        "wo.weight": (width, heads * head_dim),
    }


def _swiglu_shapes(width: int, hidden: int) -> dict[str, tuple[int, ...]]:
    return {"w1.weight": (hidden, width), "w2.weight": (width, hidden), "w3.weight": (hidden, width)}


@frozen
class SwiGLU(Leaf):
    """Llama's feed-forward (``layers.SwiGLULeaf``): bias-free ``w1``, ``w3`` to ``hidden`` and ``w2`` back."""

    hidden: int = field(validator=_POSITIVE_INT)

    module_types: ClassVar[dict[str, str]] = {"SwiGLU": "SwiGLULeaf"}
    coverage: ClassVar[tuple[str, dict[str, str]] | None] = ("swiglu", {"SwiGLU": "true"})

    def layer(self, width: int) -> LayerCall:
        return LayerCall("SwiGLULeaf", (width, self.hidden))

    def parameter_shapes(self, width: int) -> dict[str, tuple[int, ...]]:
        return _swiglu_shapes(width, self.hidden)

    def describe(self, width: int) -> str:
        return f"SwiGLU({width}->{self.hidden}->{width})"

    def simpler(self) -> tuple[Leaf, ...]:
        return tuple(SwiGLU(h) for h in sorted({1, self.hidden // 2} - {0, self.hidden}))


@frozen
class Attention(Leaf):
    """Hand-built causal self-attention (``layers.AttentionLeaf``): q/k/v/o projections of their own,
    ``kv_heads`` dividing ``heads`` (grouped-query below it), rotary embedding from a non-persistent
    buffer where ``head_dim`` is even. Head counts and ``heads * head_dim`` are as uneven against the
    world size as widths are."""

    heads: int = field(validator=_POSITIVE_INT)
    head_dim: int = field(validator=_POSITIVE_INT)
    kv_heads: int = field(validator=[*_POSITIVE_INT, _divides_heads])

    module_types: ClassVar[dict[str, str]] = {"Attention": "AttentionLeaf"}
    coverage: ClassVar[tuple[str, dict[str, str]] | None] = (
        "attention",
        {"Attention": "qkvo", "MultiheadAttention": "packed"},
    )

    def layer(self, width: int) -> LayerCall:
        return LayerCall("AttentionLeaf", (width, self.heads, self.kv_heads, self.head_dim))

    def parameter_shapes(self, width: int) -> dict[str, tuple[int, ...]]:
        return _attention_shapes(width, self.heads, self.kv_heads, self.head_dim)

    def describe(self, width: int) -> str:
        return f"Attention({width}, heads {self.heads}/{self.kv_heads}kv x {self.head_dim})"

    def simpler(self) -> tuple[Leaf, ...]:
        return tuple(
            leaf
            for leaf in (
                Attention(1, 1, 1),
                Attention(self.heads, 1, self.kv_heads),
                Attention(self.heads, 2, self.heads),
            )
            if leaf != self
        )


@frozen
class MultiheadAttention(Leaf):
    """``nn.MultiheadAttention`` (``layers.MultiheadAttentionLeaf``): one packed ``in_proj_weight`` for q,
    k and v. It needs the width divisible by its head count: ``gcd(width, heads)`` heads are used."""

    heads: int = field(validator=_POSITIVE_INT)
    bias: bool = field(default=True, validator=instance_of(bool))

    module_types: ClassVar[dict[str, str]] = {"MultiheadAttention": "MultiheadAttentionLeaf"}
    coverage = Attention.coverage

    def layer(self, width: int) -> LayerCall:
        return LayerCall("MultiheadAttentionLeaf", (width, math.gcd(width, self.heads)), {"bias": self.bias})

    def parameter_shapes(self, width: int) -> dict[str, tuple[int, ...]]:
        biases = {"in_proj_bias": (3 * width,), "out_proj.bias": (width,)} if self.bias else {}
        return {"in_proj_weight": (3 * width, width), "out_proj.weight": (width, width), **biases}

    def describe(self, width: int) -> str:
        return f"MultiheadAttention({width}, heads {math.gcd(width, self.heads)}{'' if self.bias else ' nobias'})"

    def simpler(self) -> tuple[Leaf, ...]:
        return (MultiheadAttention(1),) if self != MultiheadAttention(1) else ()


@frozen
class TransformerBlock(Leaf):
    """A pre-norm Llama block (``layers.TransformerBlockLeaf``): ``attention_norm`` and ``ffn_norm``
    (RMSNorms), ``attention`` (as ``Attention``) and ``feed_forward`` (as ``SwiGLU``), with residuals."""

    heads: int = field(validator=_POSITIVE_INT)
    head_dim: int = field(validator=_POSITIVE_INT)
    kv_heads: int = field(validator=[*_POSITIVE_INT, _divides_heads])
    hidden: int = field(validator=_POSITIVE_INT)

    module_types: ClassVar[dict[str, str]] = {"TransformerBlock": "TransformerBlockLeaf"}
    coverage: ClassVar[tuple[str, dict[str, str]] | None] = ("transformer_block", {"TransformerBlock": "true"})

    def layer(self, width: int) -> LayerCall:
        return LayerCall("TransformerBlockLeaf", (width, self.heads, self.kv_heads, self.head_dim, self.hidden))

    def parameter_shapes(self, width: int) -> dict[str, tuple[int, ...]]:
        attention = _attention_shapes(width, self.heads, self.kv_heads, self.head_dim)
        feed_forward = _swiglu_shapes(width, self.hidden)
        return {
            "attention_norm.weight": (width,),
            **{f"attention.{k}": v for k, v in attention.items()},
            "ffn_norm.weight": (width,),
            **{f"feed_forward.{k}": v for k, v in feed_forward.items()},
        }

    def describe(self, width: int) -> str:
        return f"TransformerBlock({width}, heads {self.heads}/{self.kv_heads}kv x {self.head_dim}, mlp {self.hidden})"

    def simpler(self) -> tuple[Leaf, ...]:
        smallest = TransformerBlock(1, 1, 1, 1)
        return (smallest,) if self != smallest else ()


#: The leaf kinds, the registry every part of shardfuzz reads: a new kind is added here.
LEAF_CLASSES: tuple[type[Leaf], ...] = (
    Linear,
    LayerNorm,
    BatchNorm,
    Conv,
    Embedding,
    Scale,
    Tied,
    RMSNorm,
    SwiGLU,
    Attention,
    MultiheadAttention,
    TransformerBlock,
)

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


def leaf_coverage(model) -> dict[str, str]:
    """The model's value along each leaf kind's coverage dimension (``Leaf.coverage``); ``model``: a ``Model``,
    or anything with ``leaf_kinds()`` (a ``UserModel``: its module classes' names)."""
    kinds = model.leaf_kinds()
    return {dimension: _mix(kinds, labels) for dimension, labels in coverage_dimensions().items()}


def coverage_dimensions() -> dict[str, dict[str, str]]:
    """``{dimension: {kind: label}}`` from the registry, dimensions in the registry's order."""
    dimensions: dict[str, dict[str, str]] = {}
    for kind in LEAF_CLASSES:
        if kind.coverage is not None:
            dimension, labels = kind.coverage
            dimensions.setdefault(dimension, {}).update(labels)
    return dimensions


def coverage_values(labels: dict[str, str]) -> set[str]:
    """Every value a dimension with these labels can take."""
    if set(labels.values()) == {"true"}:
        return {"true", "false"}
    return {"none", *labels.values(), *(["both"] if len(labels) > 1 else [])}


def _mix(kinds: set[str], labels: dict[str, str]) -> str:
    """A true/false dimension: whether a kind of ``labels`` is among the model's leaf ``kinds``.
    Else ``none``, the label of the one kind present, or ``both``."""
    found = [label for kind, label in labels.items() if kind in kinds]
    if set(labels.values()) == {"true"}:
        return str(bool(found)).lower()
    return found[0] if len(found) == 1 else ("both" if found else "none")
