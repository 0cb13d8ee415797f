"""Learning to reweight training examples (Ren et al. 2018), the meta-learning loop TorchOpt's
`MetaAdam` is written for, ported to farzi_fast (docs/migrating.md): a model trained with
Adam on digits whose labels are 30% wrong, one learned weight per training example, and the
gradient of a clean validation loss with respect to those weights. Examples with wrong
labels hurt the validation loss, so their weights' gradients come out positive: the exact
meta-gradient through all T steps finds them without being told which they are.

    python -m examples.reweighting_adam [--steps 100] [--noise 0.3]
"""

from __future__ import annotations

import argparse

import torch
from torch.nn import functional as F

import farzi_fast

from .digits_momentum_sgd import CLASSES, digits, mlp


def noisy_labels(labels: torch.Tensor, noise: float, seed: int = 0):
    """`labels` with a `noise` share replaced by another class, and which were."""
    g = torch.Generator().manual_seed(seed)
    flipped = torch.rand(len(labels), generator=g) < noise
    shift = torch.randint(1, CLASSES, (len(labels),), generator=g)
    return torch.where(flipped, (labels + shift) % CLASSES, labels), flipped


def problem(steps: int, noise: float = 0.3, batch: int = 100, dtype=torch.float32):
    """The inner loss (each step a batch of the noisy training digits, each example's loss
    times its weight), the clean validation loss, the model, its Adam and the weights (one
    per training example, starting at 1)."""
    data = digits(dtype)
    x, y = data["train"]
    y_noisy, flipped = noisy_labels(y, noise)
    x_val, y_val = data["validation"]
    weights = torch.ones(len(y), dtype=dtype, requires_grad=True)

    def inner_loss(f, t, weights):
        rows = torch.arange((t - 1) * batch, t * batch) % len(y)
        losses = F.cross_entropy(f(x[rows]), y_noisy[rows], reduction="none")
        return (weights[rows] * losses).mean()

    def outer_loss(f):
        return F.cross_entropy(f(x_val), y_val)

    model = mlp(seed=0).to(dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    return inner_loss, outer_loss, model, optimizer, weights, flipped


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--noise", type=float, default=0.3)
    args = parser.parse_args(argv)
    inner_loss, outer_loss, model, optimizer, weights, flipped = problem(args.steps, args.noise)
    result = farzi_fast.meta_gradient(model, inner_loss, outer_loss, args.steps,
                                      meta=(weights,), optimizer=optimizer)
    grad = result.meta_grads[0]
    suspects = grad.topk(int(flipped.sum())).indices  # as many as there are wrong labels
    print(f"validation loss after {args.steps} Adam steps: {result.value.item():.3f}")
    print(f"mean dF/dweight: wrong labels {grad[flipped].mean().item():+.2e}, right labels "
          f"{grad[~flipped].mean().item():+.2e}")
    print(f"wrong labels among the {len(suspects)} largest gradients: "
          f"{flipped[suspects].float().mean().item():.2f} (chance {args.noise:.2f})")


if __name__ == "__main__":
    main()
