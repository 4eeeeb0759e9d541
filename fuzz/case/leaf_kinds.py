"""The leaf kinds of the model tree: each kind's fields, shapes, build call, description and coverage labels."""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

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


@frozen
class Experts(Leaf):
    """A mixture-of-experts feed-forward (``layers.ExpertsLeaf``), torchtitan's: a bias-free ``router`` Linear to
    ``experts`` scores, top-1 routing, and the grouped experts' 3-D weights ``experts.w1``/``w3`` ``(experts,
    hidden, width)`` and ``experts.w2`` ``(experts, width, hidden)``, which expert parallelism splits on the expert
    dimension (a ``TP`` plan's ``experts`` style). Expert counts are as uneven against the world size as widths."""

    experts: int = field(validator=_POSITIVE_INT)
    hidden: int = field(validator=_POSITIVE_INT)

    module_types: ClassVar[dict[str, str]] = {"Experts": "ExpertsLeaf"}
    coverage: ClassVar[tuple[str, dict[str, str]] | None] = ("experts", {"Experts": "true"})

    def layer(self, width: int) -> LayerCall:
        return LayerCall("ExpertsLeaf", (width, self.experts, self.hidden))

    def parameter_shapes(self, width: int) -> dict[str, tuple[int, ...]]:
        grouped = (self.experts, self.hidden, width)
        return {
            "router.weight": (self.experts, width),
            "experts.w1": grouped,
            "experts.w2": (self.experts, width, self.hidden),
            "experts.w3": grouped,
        }

    def describe(self, width: int) -> str:
        return f"Experts({width}, {self.experts} x mlp {self.hidden})"

    def simpler(self) -> tuple[Leaf, ...]:
        fewer = tuple(Experts(n, self.hidden) for n in sorted({1, self.experts // 2} - {0, self.experts}))
        return fewer + tuple(Experts(self.experts, h) for h in sorted({1, self.hidden // 2} - {0, self.hidden}))


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
    Experts,
)


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
