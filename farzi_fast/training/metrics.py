"""Evaluation. Recommendation: HR@k and nDCG@k with full ranking, i.e. the held-out item is
ranked against every item in the catalogue (no sampled negatives); the padding id and the
items already in the user's input history are excluded from the ranking. Language modelling:
perplexity, exp of the mean next-token cross-entropy."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..data.datasets import PADDING_ID


def ranking_metrics(scores: torch.Tensor, targets: torch.Tensor, history: torch.Tensor,
                    k: int = 10) -> dict[str, float]:
    """scores: users × V; targets: users; history: users × L item ids (PADDING_ID pads), the
    items to leave out of the ranking (the user's whole history).

    The rank of the target is the number of candidate items scoring **at least** as high:
    ties count against it, and a NaN target score is a miss, so a model that scores every
    item alike (or returns NaN) gets HR@k = 0, never a perfect score."""
    candidates = torch.ones_like(scores, dtype=torch.bool)
    candidates[:, PADDING_ID] = False
    candidates.scatter_(1, history, False)
    rows = torch.arange(len(targets), device=scores.device)
    candidates[rows, targets] = False  # the target competes with the others, not itself
    target_scores = scores.gather(1, targets[:, None])
    rank = ((scores >= target_scores) & candidates).sum(1)
    # NaN compares False with everything: count any NaN on the row (target or not) as a miss
    rank = torch.where(scores.isnan().any(1), scores.shape[1], rank)
    hit = rank < k
    ndcg = torch.where(hit, 1.0 / torch.log2(rank.float() + 2.0),
                       torch.zeros_like(rank, dtype=torch.float))
    return {f"HR@{k}": hit.float().mean().item(), f"nDCG@{k}": ndcg.mean().item()}


@torch.no_grad()
def evaluate_recommender(model: nn.Module, data, split: str = "test", max_len: int = 200,
                         batch_size: int = 256, k: int = 10) -> dict[str, float]:
    """HR@k / nDCG@k of `model` on the leave-one-out `split` ('valid' or 'test'); the
    model sees the last `max_len` items of each history, the ranking excludes all of it."""
    return score_recommendations(lambda x: last_logits(model, x), model, data, split,
                                 max_len, batch_size, k)


def last_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The logits of each row's last position: through `features`/`output` when the model
    splits its forward so (the package's students do), which spares the logits of every other
    position (seq times fewer over a large catalogue), else its whole forward's last row."""
    features, output = getattr(model, "features", None), getattr(model, "output", None)
    if callable(features) and callable(output):
        return output(features(x)[:, -1])
    return model(x)[:, -1]


@torch.no_grad()
def score_recommendations(score_fn, model, data, split: str, max_len: int,
                          batch_size: int = 256, k: int = 10) -> dict[str, float]:
    """Ranking metrics of `score_fn(inputs) -> users × V scores` on `split`; `model` (or
    None) is put in eval mode meanwhile and gives the device."""
    was_training = model.training if model is not None else False
    device = next(model.parameters()).device if model is not None else torch.device("cpu")
    if model is not None:
        model.eval()
    inputs, targets = data.split_inputs(split, max_len)
    histories = data.split_histories(split)
    totals: dict[str, float] = {}
    count = 0
    for start in range(0, len(targets), batch_size):
        x = inputs[start:start + batch_size].to(device)
        y = targets[start:start + batch_size].to(device)
        seen = histories[start:start + batch_size].to(device)
        for name, value in ranking_metrics(score_fn(x), y, seen, k).items():
            totals[name] = totals.get(name, 0.0) + value * len(y)
        count += len(y)
    if model is not None:
        model.train(was_training)
    return {name: value / count for name, value in totals.items()}


@torch.no_grad()
def perplexity(model: nn.Module, data, split: str = "test", seq_len: int = 64,
               batch_size: int = 64) -> float:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunks = data.chunks(split, seq_len + 1)
    total, tokens = 0.0, 0
    for start in range(0, len(chunks), batch_size):
        batch = chunks[start:start + batch_size].to(device)
        logits = model(batch[:, :-1])
        total += nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             batch[:, 1:].reshape(-1), reduction="sum").item()
        tokens += batch[:, 1:].numel()
    model.train(was_training)
    return math.exp(total / tokens)
