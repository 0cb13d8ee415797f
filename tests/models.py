"""Small students for the engine tests, and inner/outer problems over them."""

import torch
from torch import nn


def mlp(dtype=torch.float64, sizes=(5, 8, 3), seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1]).to(dtype)


class TinyCausalTransformer(nn.Module):
    """One pre-norm causal self-attention block with dropout, over soft inputs: x is a
    distribution over the vocabulary at each position, multiplied into the embedding."""

    def __init__(self, vocab=11, dim=8, heads=2, seq=6, dropout=0.1):
        super().__init__()
        self.embed = nn.Parameter(torch.randn(vocab, dim) * 0.3)
        self.pos = nn.Parameter(torch.randn(seq, dim) * 0.1)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        # No qkv bias: a key bias shifts every score of a row equally, softmax ignores it, so its
        # true gradient is 0 and Adam would turn rounding noise into lr-sized steps (an
        # ill-conditioned meta-gradient for any method; see benchmarks/NOTES.md).
        self.qkv, self.proj = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)
        self.heads = heads

    def forward(self, x):
        b, s, _ = x.shape
        h = x @ self.embed + self.pos[:s]
        q, k, v = self.qkv(self.norm1(h)).chunk(3, dim=-1)
        split = lambda t: t.view(b, s, self.heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        mask = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
        attn = self.drop(scores.masked_fill(mask, float("-inf")).softmax(-1))
        h = h + self.drop(self.proj((attn @ v).transpose(1, 2).reshape(b, s, -1)))
        h = h + self.drop(self.ff(self.norm2(h)))
        return h @ self.embed.T


def regression_problem(dtype=torch.float64, batches=3, batch=4, seed=1, widen=False):
    """Inner batches that change with t (X[t % batches]), meta = (X, Y), outer = fixed set.
    `widen` converts the `dtype` data to float64 (exactly), for float64 references."""
    g = torch.Generator().manual_seed(seed)
    final = torch.float64 if widen else dtype
    data = lambda *shape: torch.randn(*shape, generator=g).to(dtype).to(final)  # noqa: E731
    x = data(batches, batch, 5).requires_grad_()
    y = data(batches, batch, 3).requires_grad_()
    x_val, y_val = data(16, 5), data(16, 3)

    def loss_fn(f, t, x, y):
        i = t % x.shape[0]
        return ((f(x[i]) - y[i]) ** 2).mean()

    def outer_fn(f):
        return ((f(x_val) - y_val) ** 2).mean()

    return loss_fn, outer_fn, (x, y)


def language_problem(model, dtype=torch.float64, batch=3, seed=2):
    """Soft synthetic sequences (meta, logits) train the LM; outer = loss on hard sequences."""
    g = torch.Generator().manual_seed(seed)
    vocab, seq = model.embed.shape[0], model.pos.shape[0]
    logits = torch.randn(batch, seq, vocab, generator=g, dtype=dtype).requires_grad_()
    real = torch.randint(vocab, (8, seq), generator=g)

    def loss_fn(f, t, logits):
        soft = logits.softmax(-1)
        pred = f(soft)[:, :-1].log_softmax(-1)
        return -(soft[:, 1:] * pred).sum(-1).mean()

    def outer_fn(f):
        one_hot = nn.functional.one_hot(real, vocab).to(dtype)
        pred = f(one_hot)[:, :-1]
        return nn.functional.cross_entropy(pred.reshape(-1, vocab), real[:, 1:].reshape(-1))

    return loss_fn, outer_fn, (logits,)
