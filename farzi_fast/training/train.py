"""Training a student with next-item cross-entropy on hard sequences (real data, a random
subset) or soft ones (a FarziData summary): the baselines every Farzi table needs."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..models import SequenceStudent, soft_padding


def hard_loss(model: Callable[..., torch.Tensor], batch: torch.Tensor,
              padding_id: int | None = None, *, by_position: bool = False) -> torch.Tensor:
    """Next-item cross-entropy on rows of ids (batch × (L+1)); padding targets are ignored.

    Args:
        model: ids (batch × L) -> logits (batch × L × V).
        batch: the rows.
        padding_id: the id whose targets are ignored (None: none is).
        by_position: `model(inputs, positions=mask)` returns the logits of the masked
            positions only (the package's students do, `SequenceStudent`): it is asked for
            the positions with a real target only. The same loss, without the padding's logits.
    """
    inputs, targets = batch[:, :-1], batch[:, 1:]
    if by_position and padding_id is not None:
        real = targets != padding_id
        return nn.functional.cross_entropy(model(inputs, positions=real), targets[real])
    logits = model(inputs)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                       targets.reshape(-1),
                                       ignore_index=-100 if padding_id is None else padding_id)


@dataclass
class SoftBatch:
    """Soft sequences split for next-item training: `inputs` (batch × (L-1) × V), `real`
    (bool, batch × (L-1): the positions whose target is not padding; None without a padding
    id: every position) and `targets` (the real positions' target distributions, n × V, or
    batch × (L-1) × V when `real` is None)."""

    inputs: torch.Tensor
    real: torch.Tensor | None
    targets: torch.Tensor


def split_soft(soft: torch.Tensor, padding_id: int | None = None) -> SoftBatch:
    """`soft` (batch × L × V) split into inputs and real targets (`soft_padding` on
    `padding_id` marks the padding ones). A loop that trains on the same sequences at every
    step splits them once: their slices' gradients are then summed once, not per step."""
    inputs, targets = soft[:, :-1], soft[:, 1:]
    padding = soft_padding(targets, padding_id)
    if padding is None:
        return SoftBatch(inputs, None, targets)
    return SoftBatch(inputs, ~padding, targets[~padding])


def soft_batch_loss(model: Callable[..., torch.Tensor], batch: SoftBatch, *,
                    by_position: bool = False) -> torch.Tensor:
    """Next-item cross-entropy of `batch` (`split_soft`) against its soft targets, averaged
    over its real positions (0 without one). `by_position` as for `hard_loss`."""
    if batch.real is None:
        return -(batch.targets * model(batch.inputs).log_softmax(-1)).sum(-1).mean()
    logits = model(batch.inputs, positions=batch.real) if by_position else \
        model(batch.inputs)[batch.real]
    losses = -(batch.targets * logits.log_softmax(-1)).sum(-1)
    return losses.sum() / batch.real.sum().clamp_min(1)


def soft_loss(model: Callable[..., torch.Tensor], soft: torch.Tensor,
              padding_id: int | None = None, *, by_position: bool = False) -> torch.Tensor:
    """Next-item cross-entropy against soft targets, for soft sequences (batch × L × V);
    padding targets (`soft_padding`) are ignored, as `hard_loss` ignores padding ids.
    `by_position` as for `hard_loss`."""
    return soft_batch_loss(model, split_soft(soft, padding_id), by_position=by_position)


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
    by_position = isinstance(model, SequenceStudent)
    model.train()
    for step in range(1, steps + 1):
        rows = torch.randint(len(data), (min(batch_size, len(data)),), generator=g)
        batch = data[rows].to(device)
        loss = soft_loss(model, batch, padding_id, by_position=by_position) \
            if batch.is_floating_point() else \
            hard_loss(model, batch, padding_id, by_position=by_position)
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
