"""The module classes a case's model is built from that are no torch class as they stand.

One definition for two users: ``build.build_module`` makes them on the pool's ranks,
and ``export`` copies this file's definitions into every exported script. So this
module imports only what such a script imports at its top (``torch``, ``nn``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "Block",
    "Conv1dLeaf",
    "Conv2dLeaf",
    "ScaleLeaf",
    "TiedLeaf",
    "SwiGLULeaf",
    "AttentionLeaf",
    "MultiheadAttentionLeaf",
    "TransformerBlockLeaf",
    "whole_weight",
    "GroupedExpertsLeaf",
    "ExpertsLeaf",
    "layer_class",
]


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

    def reset_parameters(self):  # after to_empty (a model built on the meta device): its own state
        with torch.no_grad():
            self.scale.copy_(torch.rand(()) + 0.5)
            self.shift.fill_(0.25)

    def forward(self, x):
        return x * self.scale + self.shift


class TiedLeaf(nn.Module):
    """Two width-to-width Linears ``a`` then ``b`` that share one weight (tied weights)."""

    def __init__(self, width, bias):
        super().__init__()
        self.a = nn.Linear(width, width, bias=bias)
        self.b = nn.Linear(width, width, bias=bias)
        self.b.weight = self.a.weight

    def tie_weights(self):
        """Share ``a``'s weight again: ``to_empty`` (a model built on the meta device) makes each parameter
        anew, one per name, as Hugging Face's models re-tie theirs after it."""
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(self.a(x))


class SwiGLULeaf(nn.Module):
    """Llama's feed-forward: ``w2(silu(w1(x)) * w3(x))``, three bias-free Linears through a hidden width."""

    def __init__(self, width, hidden):
        super().__init__()
        self.w1 = nn.Linear(width, hidden, bias=False)
        self.w2 = nn.Linear(hidden, width, bias=False)
        self.w3 = nn.Linear(width, hidden, bias=False)

    def forward(self, x):
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))


class AttentionLeaf(nn.Module):
    """Hand-built causal self-attention over the batch taken as one sequence: projections ``wq`` to
    ``heads * head_dim``, ``wk``/``wv`` to ``kv_heads * head_dim`` (grouped-query where fewer), ``wo``
    back to the width. Where ``head_dim`` is even, rotary position embedding from ``inv_freq``, a
    non-persistent buffer (in no state dict: a rebuilt model must compute it again, as Llama's does)."""

    def __init__(self, width, heads, kv_heads, head_dim):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.wq = nn.Linear(width, heads * head_dim, bias=False)
        self.wk = nn.Linear(width, kv_heads * head_dim, bias=False)
        self.wv = nn.Linear(width, kv_heads * head_dim, bias=False)
        self.wo = nn.Linear(heads * head_dim, width, bias=False)
        if head_dim % 2 == 0:
            self.register_buffer("inv_freq", self.rotary_frequencies(), persistent=False)

    def reset_parameters(self):
        """After ``to_empty`` (a model built on the meta device): its own state, the rotary table (the
        projections reset their own); no checkpoint holds a non-persistent buffer, so only this restores it."""
        if self.head_dim % 2 == 0:
            with torch.no_grad():
                self.inv_freq.copy_(self.rotary_frequencies())

    def rotary_frequencies(self):
        """The rotary table, a function of the shape alone (to recompute it after ``to_empty``)."""
        return 1.0 / (10000.0 ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))

    def _rotate(self, x):  # x: (heads, seq, head_dim)
        angles = torch.outer(torch.arange(x.shape[1], device=x.device, dtype=x.dtype), self.inv_freq.to(x.dtype))
        cos, sin = angles.cos(), angles.sin()
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)

    def forward(self, x):
        seq = x.shape[0]
        q = self.wq(x).view(seq, self.heads, self.head_dim).transpose(0, 1)
        k = self.wk(x).view(seq, self.kv_heads, self.head_dim).transpose(0, 1)
        v = self.wv(x).view(seq, self.kv_heads, self.head_dim).transpose(0, 1)
        if self.head_dim % 2 == 0:
            q, k = self._rotate(q), self._rotate(k)
        repeat = self.heads // self.kv_heads
        k, v = k.repeat_interleave(repeat, dim=0), v.repeat_interleave(repeat, dim=0)
        out = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(out.transpose(0, 1).reshape(seq, self.heads * self.head_dim))


class MultiheadAttentionLeaf(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` as self-attention over the batch taken as one sequence: q, k and v
    come from one packed ``in_proj_weight`` (3 * width rows), the output from ``out_proj``."""

    def reset_parameters(self):  # the packed projection (torch names it _reset_parameters)
        self._reset_parameters()

    def forward(self, x):
        return super().forward(x, x, x, need_weights=False)[0]


class TransformerBlockLeaf(nn.Module):
    """A pre-norm transformer block as Llama's: ``h = x + attention(attention_norm(x))``, then
    ``h + feed_forward(ffn_norm(h))``, with RMSNorms, an ``AttentionLeaf`` and a ``SwiGLULeaf``."""

    def __init__(self, width, heads, kv_heads, head_dim, hidden):
        super().__init__()
        self.attention_norm = nn.RMSNorm(width)
        self.attention = AttentionLeaf(width, heads, kv_heads, head_dim)
        self.ffn_norm = nn.RMSNorm(width)
        self.feed_forward = SwiGLULeaf(width, hidden)

    def forward(self, x):
        h = x + self.attention(self.attention_norm(x))
        return h + self.feed_forward(self.ffn_norm(h))


def whole_weight(weight):
    """A grouped weight whole: gathered where expert parallelism split it (a DTensor), else as it is. ``isinstance``,
    not ``hasattr``: under ``torch.compile`` the attribute test did not see the DTensor, which reached indexing."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch before 2.5
        from torch.distributed._tensor import DTensor
    return weight.full_tensor() if isinstance(weight, DTensor) else weight


class GroupedExpertsLeaf(nn.Module):
    """torchtitan's grouped experts: each expert a SwiGLU feed-forward, its weights stacked on a leading expert
    dimension (``w1``, ``w3``: ``(experts, hidden, width)``; ``w2``: ``(experts, width, hidden)``), the dimension
    expert parallelism splits. Split so (DTensors), each weight is gathered whole for the forward: every rank
    of an ``ep`` group trains on the same batch, so each keeps its experts' share of the gradient."""

    def __init__(self, width, experts, hidden):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(experts, hidden, width))
        self.w2 = nn.Parameter(torch.empty(experts, width, hidden))
        self.w3 = nn.Parameter(torch.empty(experts, hidden, width))
        self.reset_parameters()

    def reset_parameters(self):
        with torch.no_grad():
            for weight in (self.w1, self.w2, self.w3):
                nn.init.uniform_(weight, -1.0 / weight.shape[-1] ** 0.5, 1.0 / weight.shape[-1] ** 0.5)

    def forward(self, x, chosen):
        w1, w2, w3 = (whole_weight(w) for w in (self.w1, self.w2, self.w3))
        gated = nn.functional.silu(torch.einsum("tw,thw->th", x, w1[chosen])) * torch.einsum(
            "tw,thw->th", x, w3[chosen]
        )
        return torch.einsum("th,twh->tw", gated, w2[chosen])


class ExpertsLeaf(nn.Module):
    """A mixture-of-experts feed-forward as torchtitan's: a bias-free ``router`` Linear scores the experts, each
    token goes to its best one (top-1), and ``x + score * expert(x)`` comes out. An expert no token reached has a
    zero gradient at that step."""

    def __init__(self, width, experts, hidden):
        super().__init__()
        self.router = nn.Linear(width, experts, bias=False)
        self.experts = GroupedExpertsLeaf(width, experts, hidden)

    def forward(self, x):
        score, chosen = self.router(x).softmax(dim=-1).max(dim=-1)
        return x + score.unsqueeze(-1) * self.experts(x, chosen)


def layer_class(name: str) -> type:
    """The class a leaf kind names (``case.leaf_kinds``'s ``LayerCall.cls``): ``nn.X`` is torch's, else one above."""
    return getattr(nn, name[3:]) if name.startswith("nn.") else globals()[name]
