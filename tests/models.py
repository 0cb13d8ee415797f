"""Small students for the engine tests, and inner/outer problems over them."""

import torch
from torch import nn

from farzi_fast.models import transformer_lm


def mlp(dtype=torch.float64, sizes=(5, 8, 3), seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1]).to(dtype)


def tiny_transformer(dtype=torch.float64, dropout=0.1, seed=0):
    """The package's causal Transformer LM at toy size (vocab 11, length 6, dim 8)."""
    torch.manual_seed(seed)
    return transformer_lm(11, max_len=6, dim=8, heads=2, layers=1, dropout=dropout).to(dtype)


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


RUN_OPTIONS = ("device", "checkpoint", "checkpoint_every", "resume", "process_group",
               "check_every", "anchor_every", "anchor_head", "skip_nonfinite")
HOOKS = ("teacher", "validate", "validate_every", "callback")


def run_distill(students, train, **settings):
    """farzi_fast.distill with its settings as keywords, each routed to where it belongs:
    DistillConfig fields, RunOptions fields or hooks."""
    from farzi_fast import DistillConfig, RunOptions, distill

    run = RunOptions(**{k: settings.pop(k) for k in RUN_OPTIONS if k in settings})
    hooks = {k: settings.pop(k) for k in HOOKS if k in settings}
    return distill(students, train, DistillConfig(**settings), run, **hooks)
