"""Module trees and layer widths.

Widths are drawn so that values at or below a typical world size (1-4) are as
likely as the whole range: uneven splits, widths of 1 and widths smaller than
the world size (ranks holding an empty shard) are common, not rare.
"""

from __future__ import annotations

import attrs
from hypothesis import strategies as st

from shardfuzz.case import (
    DTYPES,
    LEAF_CLASSES,
    Attention,
    BatchNorm,
    Block,
    Conv,
    Embedding,
    Experts,
    LayerNorm,
    Linear,
    Model,
    MultiheadAttention,
    RMSNorm,
    Scale,
    Sequential,
    SwiGLU,
    Tied,
    TransformerBlock,
    has_trainable_linear,
    leaves,
    map_first_linear,
)
from shardfuzz.strategies._helpers import check_int, check_interval, weighted
from shardfuzz.strategies.options import rarely

__all__ = [
    "widths",
    "linears",
    "norm_layers",
    "convs",
    "embeddings",
    "attention_layers",
    "transformer_blocks",
    "experts_layers",
    "dtypes",
    "module_trees",
    "models",
]

_SMALL = 4
#: The most children a container is drawn with: also the most stages a pipeline cuts a drawn root into.
MAX_CHILDREN = 3


def widths(*, min_value: int = 1, max_value: int = 16) -> st.SearchStrategy[int]:
    """Layer widths in ``[min_value, max_value]``, small ones over-represented."""
    check_interval("min_value", min_value, "max_value", max_value, minimum=1)
    small = st.integers(min_value, min(max_value, max(min_value, _SMALL)))
    return st.one_of(small, st.integers(min_value, max_value))


def linears(*, max_width: int = 16) -> st.SearchStrategy[Linear]:
    """A ``Linear`` leaf; its input width is its predecessor's output. About 1 in 5 is
    frozen (``requires_grad=False``); failures shrink towards trainable."""
    check_int("max_width", max_width, minimum=1)
    return st.builds(Linear, out_features=widths(max_value=max_width), bias=st.booleans(), frozen=rarely(one_in=5))


def norm_layers() -> st.SearchStrategy[LayerNorm | BatchNorm]:
    """A ``LayerNorm`` or a ``BatchNorm`` (1-D parameters; BatchNorm adds buffers, one of them 0-D int64)."""
    return st.one_of(st.builds(LayerNorm), st.builds(BatchNorm))


def convs() -> st.SearchStrategy[Conv]:
    """A width-keeping ``Conv1d`` or ``Conv2d`` leaf: 3-D or 4-D weights, kernel 1 or 3, bias on or off."""
    return st.builds(Conv, dims=st.sampled_from((1, 2)), kernel_size=st.sampled_from((1, 3)), bias=st.booleans())


def embeddings(*, max_width: int = 16) -> st.SearchStrategy[Embedding | None]:
    """The model's first leaf: ``None`` (features in) in 4 draws of 5, else an ``Embedding`` over a
    vocabulary drawn like a width (so uneven and empty shards of its rows are common)."""
    check_int("max_width", max_width, minimum=1)
    return weighted((4, st.none()), (1, st.builds(Embedding, widths(max_value=max_width))))


def _head_counts(draw_heads: st.SearchStrategy[int]) -> st.SearchStrategy[tuple[int, int]]:
    """``(heads, kv_heads)`` with ``kv_heads`` a divisor of ``heads`` (grouped-query when below it)."""
    return draw_heads.flatmap(lambda heads: st.tuples(st.just(heads), st.sampled_from(_divisors(heads))))


def _divisors(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]  # n first: shrinks to plain multi-head


def attention_layers(*, max_heads: int = 4, max_head_dim: int = 4) -> st.SearchStrategy[Attention | MultiheadAttention]:
    """Self-attention: a hand-built q/k/v/o ``Attention`` (heads, grouped kv heads, head size; rotary
    where the head size is even) or ``nn.MultiheadAttention`` with its packed q/k/v weight."""
    check_int("max_heads", max_heads, minimum=1)
    check_int("max_head_dim", max_head_dim, minimum=1)
    heads = st.integers(1, max_heads)
    qkvo = st.tuples(_head_counts(heads), st.integers(1, max_head_dim)).map(
        lambda drawn: Attention(heads=drawn[0][0], kv_heads=drawn[0][1], head_dim=drawn[1])
    )
    return st.one_of(qkvo, st.builds(MultiheadAttention, heads=heads, bias=st.booleans()))


def swiglus(*, max_width: int = 16) -> st.SearchStrategy[SwiGLU]:
    """A SwiGLU feed-forward through a hidden width drawn like a width."""
    return st.builds(SwiGLU, widths(max_value=max_width))


def transformer_blocks(
    *, max_heads: int = 4, max_head_dim: int = 4, max_width: int = 16
) -> st.SearchStrategy[TransformerBlock]:
    """A pre-norm transformer block: RMSNorms, q/k/v/o attention and a SwiGLU feed-forward."""
    check_int("max_heads", max_heads, minimum=1)
    check_int("max_head_dim", max_head_dim, minimum=1)
    return st.tuples(
        _head_counts(st.integers(1, max_heads)), st.integers(1, max_head_dim), widths(max_value=max_width)
    ).map(lambda drawn: TransformerBlock(heads=drawn[0][0], kv_heads=drawn[0][1], head_dim=drawn[1], hidden=drawn[2]))


def experts_layers(*, max_experts: int = 6, max_width: int = 16) -> st.SearchStrategy[Experts]:
    """A mixture-of-experts feed-forward: an expert count (uneven against the world size, below it too) and a
    hidden width drawn like a width."""
    check_int("max_experts", max_experts, minimum=1)
    return st.builds(Experts, widths(max_value=max_experts), widths(max_value=max_width))


def dtypes() -> st.SearchStrategy[str]:
    """The model's dtype: float32 in 3 draws of 4, else float64 or bfloat16; shrinks to float32."""
    return st.sampled_from(("float32",) * 6 + tuple(d for d in DTYPES if d != "float32"))


def _containers(children: st.SearchStrategy, max_children: int) -> st.SearchStrategy:
    kids = st.lists(children, min_size=1, max_size=max_children)
    return st.one_of(st.builds(Sequential, kids), st.builds(Block, kids))


def module_trees(
    *, max_leaves: int = 6, max_children: int = MAX_CHILDREN, max_width: int = 16
) -> st.SearchStrategy[Sequential | Block]:
    """A container tree of at most ``max_leaves`` leaves: Sequential and custom Block nodes over leaves, with at
    least one trainable Linear. A leaf is a Linear in 2 draws of 11, else, one in 11 each: a norm layer, a
    convolution, a ``Scale`` with a 0-D parameter, a ``Tied`` pair of Linears sharing a weight, and the
    transformer's leaves: ``RMSNorm``, attention (``attention_layers``), a SwiGLU feed-forward, a whole block and a
    mixture of experts (``experts_layers``).

    Single-child containers make deep nesting (depth 3 and more) cheap to reach; a flat stack of three children
    or more in about 1 tree of 5 (wide roots: pipeline stages, many Linears), each child a Linear in 3 of 6, another
    leaf in 2, two leaves of one family in 1 (two kinds in one model: a LayerNorm and a BatchNorm, say).
    A bare leaf drawn as the whole tree is put in a Sequential (the root is a container).
    Failures shrink towards Linears only.
    """
    check_int("max_leaves", max_leaves, minimum=1)
    check_int("max_children", max_children, minimum=1)
    linear = linears(max_width=max_width)
    leaf = weighted(
        (2, linear),
        (1, norm_layers()),
        (1, convs()),
        (1, st.builds(Scale)),
        (1, st.builds(Tied)),
        (1, st.builds(RMSNorm)),
        (1, attention_layers()),
        (1, swiglus(max_width=max_width)),
        (1, transformer_blocks(max_width=max_width)),
        (1, experts_layers(max_width=max_width)),
    )
    trees = st.recursive(leaf, lambda inner: _containers(inner, max_children), max_leaves=max_leaves).map(_as_root)
    if max_leaves >= 3:
        # Two leaves of one family side by side (two norms, two convolutions, two attentions: each kind of the
        # family in half of them), in a Sequential of their own.
        siblings = st.one_of(*(st.tuples(family, family) for family in (norm_layers(), convs(), attention_layers())))
        element = weighted((3, linear), (2, leaf), (1, siblings.map(Sequential)))
        stacked = st.integers(3, max_leaves).flatmap(  # a size drawn first: st.lists keeps near its minimum
            lambda size: st.lists(element, min_size=size, max_size=size).map(lambda nodes: _within(nodes, max_leaves))
        )
        trees = weighted((4, trees), (1, st.one_of(st.builds(Sequential, stacked), st.builds(Block, stacked))))
    # st.recursive's max_leaves is a soft cap; the filter makes it a bound and rarely rejects.
    return trees.filter(lambda root: len(leaves(root)) <= max_leaves and _has_linear(root)).map(_one_trainable)


def _within(nodes: list, max_leaves: int) -> list:
    """The first of ``nodes`` that hold at most ``max_leaves`` leaves in all (one at least)."""
    kept: list = []
    for node in nodes:
        if kept and len(leaves(Sequential([*kept, node]))) > max_leaves:
            break
        kept.append(node)
    return kept


def _has_linear(root) -> bool:
    return any(isinstance(leaf, Linear) for leaf in leaves(root))


def _one_trainable(root):
    """``root`` with its first Linear trainable if every Linear was drawn frozen (training needs a gradient)."""
    if has_trainable_linear(root):
        return root
    return map_first_linear(root, lambda linear: attrs.evolve(linear, frozen=False))


def _as_root(node):
    return Sequential([node]) if isinstance(node, LEAF_CLASSES) else node


def models(*, max_leaves: int = 6, max_children: int = MAX_CHILDREN, max_width: int = 16) -> st.SearchStrategy[Model]:
    """A ``Model``: an input width, a module tree (its first leaf sometimes an Embedding), a dtype."""
    return st.builds(
        _model,
        input_width=widths(max_value=max_width),
        root=module_trees(max_leaves=max_leaves, max_children=max_children, max_width=max_width),
        embedding=embeddings(max_width=max_width),
        dtype=dtypes(),
    )


def _model(input_width: int, root, embedding: Embedding | None, dtype: str) -> Model:
    if embedding is not None:
        root = attrs.evolve(root, children=(embedding, *root.children))
    return Model(input_width=input_width, root=root, dtype=dtype)
