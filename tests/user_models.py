"""Model factories for the ``--model`` tests: what a user writes to fuzz their own model."""

import torch
from torch import nn


class TinyLM(nn.Module):
    """A small transformer language model: token embedding, one encoder layer, a norm and an LM head."""

    def __init__(self, vocab: int = 11, width: int = 6, heads: int = 2, context: int = 5):
        super().__init__()
        self.vocab, self.context = vocab, context
        self.embed = nn.Embedding(vocab, width)
        self.block = nn.TransformerEncoderLayer(width, heads, dim_feedforward=10, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, tokens):
        return self.head(self.norm(self.block(self.embed(tokens))))

    def example_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(self.vocab, (batch_size, self.context), generator=generator)


def small_transformer() -> nn.Module:
    return TinyLM()


def mlp_with_batch_function():
    """The other form: ``(module, make_batch)``."""
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    return model, lambda batch_size, generator: torch.randn(batch_size, 3, generator=generator)


def not_a_module():
    return 42


def no_batch():
    return nn.Linear(2, 2)
