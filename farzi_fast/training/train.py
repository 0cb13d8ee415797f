"""Training a student with next-item cross-entropy on hard sequences (real data, a random
subset) or soft ones (a FarziData summary): the baselines every Farzi table needs."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..models import soft_padding


def hard_loss(model: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor,
              padding_id: int | None = None) -> torch.Tensor:
    """Next-item cross-entropy on rows of ids (batch × (L+1)); padding targets are ignored."""
    logits = model(batch[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                       batch[:, 1:].reshape(-1),
                                       ignore_index=-100 if padding_id is None else padding_id)


def soft_loss(model: nn.Module, soft: torch.Tensor, padding_id: int | None = None) -> torch.Tensor:
    """Next-item cross-entropy against soft targets, for soft sequences (batch × L × V);
    padding targets (`soft_padding`) are ignored, as `hard_loss` ignores padding ids."""
    losses = -(soft[:, 1:] * model(soft[:, :-1]).log_softmax(-1)).sum(-1)
    padding = soft_padding(soft[:, 1:], padding_id)
    if padding is None:
        return losses.mean()
    real = (~padding).to(losses.dtype)
    return (losses * real).sum() / real.sum().clamp_min(1.0)


def random_subset(rows: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """`count` rows drawn without replacement: the same-size baseline for a summary."""
    if not 0 < count <= len(rows):
        raise ValueError(f"count must lie in [1, {len(rows)}], got {count}")
    g = torch.Generator().manual_seed(seed)
    return rows[torch.randperm(len(rows), generator=g)[:count]]


def train_student(model: nn.Module, data: torch.Tensor, *, steps: int, lr: float = 1e-3,
                  batch_size: int = 128, weight_decay: float = 0.0, seed: int = 0,
                  callback=None) -> nn.Module:
    """Adam(W) on `data`: hard rows (long, n × (L+1), padding = the model's padding_id) or
    soft sequences (float, n × L × V). Returns the model, trained in place.

    `callback(step, loss)` runs after every step; training stops early when it returns True.
    A loss that is not finite stops training with a FloatingPointError naming the step."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    vocab = getattr(model, "vocab_size", None)
    if data.is_floating_point():
        if vocab is not None and data.shape[-1] != vocab:
            raise ValueError(f"soft data has a vocabulary of {data.shape[-1]}, the student "
                             f"{vocab}")
    elif vocab is not None and int(data.max()) >= vocab:
        raise ValueError(f"data holds id {int(data.max())}, beyond the student's vocabulary "
                         f"of {vocab}")
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    padding_id = getattr(model, "padding_id", None)
    model.train()
    for step in range(1, steps + 1):
        rows = torch.randint(len(data), (min(batch_size, len(data)),), generator=g)
        batch = data[rows].to(device)
        loss = soft_loss(model, batch, padding_id) if batch.is_floating_point() else \
            hard_loss(model, batch, padding_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss is {value} at step {step}: the data or "
                                     f"the learning rate ({lr}) is unusable")
        if callback is not None and callback(step, value):
            break
    return model
