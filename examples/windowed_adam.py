"""A TD3 / RaT-BPTT-shaped inner loop ported from `higher` (docs/migrating.md): learned
synthetic data in a module with `get_batch(t)`, the user's own torch.optim.Adam with coupled
weight decay, a warm-up of plain steps, then a differentiated segment that continues the same
optimizer state. With farzi_fast the segment can be the whole loop: memory does not grow with
its length, so the truncation window is no longer needed.

    python -m examples.windowed_adam [--steps 200] [--window 40]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import farzi_fast


class DistilledData(nn.Module):
    """Synthetic sequences' inputs as a product of two factors (a Tucker-style low rank), and
    soft targets, both learned."""

    def __init__(self, rows=30, batch=15, dim=16, classes=5, rank=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.codes = nn.Parameter(torch.randn(rows, rank, generator=g))
        self.basis = nn.Parameter(torch.randn(rank, dim, generator=g) / rank ** 0.5)
        self.labels = nn.Parameter(torch.randn(rows, classes, generator=g))
        self.batch = batch

    def get_batch(self, t: int):
        start = (t * self.batch) % self.codes.shape[0]
        rows = torch.arange(start, start + self.batch) % self.codes.shape[0]
        return self.codes[rows] @ self.basis, self.labels[rows].softmax(-1)


def student(dim=16, classes=5, seed=1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, 32), nn.Tanh(), nn.Linear(32, classes))


def real_data(n=256, dim=16, classes=5, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    return x, (x[:, :classes] + 0.1 * torch.randn(n, classes, generator=g)).argmax(-1)


def meta_gradient(steps: int, window: int, dtype=torch.float32):
    """dF/d(synthetic data) after `steps` Adam steps, the last `window` differentiated
    (window = steps: the full gradient). Returns farzi_fast's MetaGradient."""
    data, model = DistilledData().to(dtype), student().to(dtype)
    x_real, y_real = real_data()
    x_real = x_real.to(dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3, weight_decay=5e-5)

    def inner_loss(f, t, distilled):            # t = 1..window; the batch index continues
        x, soft = distilled.get_batch(steps - window + t - 1)
        return -(soft * f(x).log_softmax(-1)).sum(-1).mean()

    def outer_loss(f):
        return nn.functional.cross_entropy(f(x_real), y_real)

    for t in range(steps - window):             # the warm-up: plain steps, no graph
        optimizer.zero_grad()
        with torch.no_grad():
            x, soft = data.get_batch(t)
        (-(soft * model(x).log_softmax(-1)).sum(-1).mean()).backward()
        optimizer.step()
    return farzi_fast.meta_gradient(model, inner_loss, outer_loss, window, meta=(data,),
                                    optimizer=optimizer), (data, model, optimizer, inner_loss,
                                                           outer_loss)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--window", type=int, default=40)
    args = parser.parse_args(argv)
    windowed, _ = meta_gradient(args.steps, args.window)
    full, _ = meta_gradient(args.steps, args.steps)
    a = torch.cat([g.reshape(-1) for g in windowed.meta_grads[0].values()])
    b = torch.cat([g.reshape(-1) for g in full.meta_grads[0].values()])
    print(f"cosine(window {args.window}, all {args.steps} steps) = "
          f"{torch.nn.functional.cosine_similarity(a, b, dim=0).item():.3f}")


if __name__ == "__main__":
    main()
