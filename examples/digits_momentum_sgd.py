"""Dataset distillation (Wang et al. 2018) on scikit-learn's handwritten digits, with the
inner optimizer most image-distillation code uses: the user's own torch.optim.SGD with
momentum 0.9. Learned: 10 synthetic 8x8 images a class and one learning rate per inner step.
Every outer step trains a freshly initialised ConvNet on the synthetic images for T steps and
scores it on a batch of real training images; farzi_fast gives the exact gradient of that
score with respect to the images and the learning rates without keeping the T steps.

Evaluation: students trained from scratch on the distilled images with the learned learning
rates, against the same number of random real images of each class (their fixed learning rate
chosen on validation), by the distilled architecture and by an MLP it never saw; accuracy on
held-out test digits, mean ± std over student seeds distillation never used.

    python -m examples.digits_momentum_sgd [--steps 20] [--outer-steps 300] [--per-class 10]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn
from torch.nn import functional as F

import farzi_fast

CLASSES = 10
MOMENTUM = 0.9
# fixed learning rates the random-real-images baseline chooses among, on validation
BASELINE_LRS = (0.01, 0.03, 0.1, 0.3)


def digits(dtype=torch.float32, seed=0):
    """scikit-learn's 1,797 digits as (N, 1, 8, 8) images, standardised with the training
    split's mean and std; returns {"train", "validation", "test"} -> (images, labels), split
    1,000 / 300 / 497 by a fixed permutation."""
    from sklearn.datasets import load_digits  # ships the data: nothing is downloaded

    x, y = load_digits(return_X_y=True)
    x = torch.as_tensor(x, dtype=dtype).reshape(-1, 1, 8, 8)
    y = torch.as_tensor(y, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    parts = dict(train=order[:1000], validation=order[1000:1300], test=order[1300:])
    mean, std = x[parts["train"]].mean(), x[parts["train"]].std()
    return {name: ((x[i] - mean) / std, y[i]) for name, i in parts.items()}


def convnet(seed: int, width: int = 16) -> nn.Module:
    """The distilled-with student: two 3x3 convolutions with average pooling (no batch
    norm: its running statistics would make the inner loop stateful)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(2 * width * 4, CLASSES))


def mlp(seed: int, width: int = 128) -> nn.Module:
    """A student distillation never saw."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(),
                         nn.Linear(width, CLASSES))


STUDENTS = {"ConvNet": convnet, "MLP": mlp}


class SyntheticImages(nn.Module):
    """`per_class` learned images of each class, started from random real ones, with fixed
    hard labels; the whole set is every inner step's batch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, per_class: int, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        chosen = torch.cat([torch.nonzero(labels == c).flatten()[
            torch.randperm(int((labels == c).sum()), generator=g)[:per_class]]
            for c in range(CLASSES)])
        self.images = nn.Parameter(images[chosen].clone())
        self.register_buffer("labels", labels[chosen].clone())

    def get_batch(self, t: int):
        return self.images, self.labels


def inner_loss(f, t, synthetic):
    x, y = synthetic.get_batch(t)
    return F.cross_entropy(f(x), y)


def fresh_student(seed: int, dtype=torch.float32):
    """Outer step `seed`'s ConvNet and the user's optimizer over it (its lr is replaced by the
    learned ones)."""
    model = convnet(seed).to(dtype)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=MOMENTUM)


def outer_loss(real, seed: int, batch: int = 256):
    """outer_loss(f): the cross-entropy of the model `f` calls on outer step `seed`'s batch
    of `batch` real training digits."""
    x, y = real
    rows = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:batch]
    return lambda f: F.cross_entropy(f(x[rows]), y[rows])


def meta_step(synthetic: SyntheticImages, log_lr: torch.Tensor, real, seed: int,
              batch: int = 256) -> torch.Tensor:
    """The outer loss after len(log_lr) momentum-SGD steps of a fresh ConvNet on the
    synthetic images, backpropagated into `synthetic`'s images and `log_lr`."""
    model, optimizer = fresh_student(seed, synthetic.images.dtype)
    trained = farzi_fast.unroll(model, inner_loss, len(log_lr), meta=(synthetic,),
                                optimizer=optimizer, lr=log_lr.exp())
    loss = outer_loss(real, seed, batch)(
        lambda x: torch.func.functional_call(model, trained, (x,)))
    loss.backward()
    return loss.detach()


def distill(real, steps=20, outer_steps=300, per_class=10, outer_lr=0.01, init_lr=0.1,
            seed=0, log_every=0):
    """Learned images and per-step learning rates: Adam on both, one meta_step each outer
    step, a new student initialisation each time (seeds 0..outer_steps-1)."""
    synthetic = SyntheticImages(*real, per_class=per_class, seed=seed)
    log_lr = torch.full((steps,), init_lr, dtype=real[0].dtype).log().requires_grad_()
    optimizer = torch.optim.Adam([synthetic.images, log_lr], lr=outer_lr)
    for outer in range(outer_steps):
        optimizer.zero_grad()
        loss = meta_step(synthetic, log_lr, real, seed=outer)
        optimizer.step()
        if log_every and (outer + 1) % log_every == 0:
            print(f"outer step {outer + 1}: real-data loss after {steps} steps {loss:.3f}")
    return synthetic, log_lr.detach()


def train_student(architecture: str, seed: int, images, labels, lrs) -> nn.Module:
    """A student trained from scratch: one full-batch momentum-SGD step per learning rate."""
    model = STUDENTS[architecture](seed).to(images.dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=float(lrs[0]), momentum=MOMENTUM)
    for lr in lrs:
        optimizer.param_groups[0]["lr"] = float(lr)
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return model


def accuracy(model: nn.Module, split) -> float:
    with torch.no_grad():
        return (model(split[0]).argmax(-1) == split[1]).float().mean().item()


def evaluate(synthetic: SyntheticImages, log_lr, data, seeds=range(1000, 1005)) -> dict:
    """Test accuracy (mean, std over `seeds`) of each student trained on the distilled images
    with the learned rates, and on random real images, per_class a class (drawn with each
    seed), at the fixed rate of BASELINE_LRS that scores best on validation."""
    per_class = len(synthetic.labels) // CLASSES
    randoms = {s: SyntheticImages(*data["train"], per_class=per_class, seed=s) for s in seeds}

    def scores(architecture, images_of, lrs, split):
        return [accuracy(train_student(architecture, s, *images_of(s), lrs), data[split])
                for s in seeds]

    def distilled(s):
        return synthetic.images.detach(), synthetic.labels

    def random(s):
        return randoms[s].images.detach(), randoms[s].labels

    results = {}
    for architecture in STUDENTS:
        best = max(BASELINE_LRS, key=lambda lr: statistics.mean(
            scores(architecture, random, [lr] * len(log_lr), "validation")))
        results[architecture] = dict(
            distilled=scores(architecture, distilled, log_lr.exp(), "test"),
            random=scores(architecture, random, [best] * len(log_lr), "test"), random_lr=best)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="inner steps T")
    parser.add_argument("--outer-steps", type=int, default=300)
    parser.add_argument("--per-class", type=int, default=10)
    args = parser.parse_args(argv)
    data = digits()
    synthetic, log_lr = distill(data["train"], args.steps, args.outer_steps, args.per_class,
                                log_every=max(args.outer_steps // 10, 1))
    print(f"learned lr per step: {', '.join(f'{v:.3f}' for v in log_lr.exp().tolist())}")
    for architecture, r in evaluate(synthetic, log_lr, data).items():
        print(f"{architecture}: test accuracy, {args.per_class} images a class, "
              f"{args.steps} steps: distilled {statistics.mean(r['distilled']):.3f} ± "
              f"{statistics.stdev(r['distilled']):.3f}, random real "
              f"{statistics.mean(r['random']):.3f} ± {statistics.stdev(r['random']):.3f} "
              f"(lr {r['random_lr']:g})")


if __name__ == "__main__":
    main()
