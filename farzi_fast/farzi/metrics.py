"""Evaluation. Recommendation: HR@k and nDCG@k with full ranking, i.e. the held-out item is
ranked against every item in the catalogue (no sampled negatives); the padding id and the
items already in the user's input history are excluded from the ranking. Language modelling:
perplexity, exp of the mean next-token cross-entropy."""

from __future__ import annotations

import math

import torch
from torch import nn


def ranking_metrics(scores: torch.Tensor, targets: torch.Tensor, history: torch.Tensor,
                    k: int = 10) -> dict[str, float]:
    """scores: users × V; targets: users; history: users × L item ids (0 = padding)."""
    scores = scores.clone().float()
    scores[:, 0] = float("-inf")
    seen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, history, True)
    seen[torch.arange(len(targets)), targets] = False
    scores[seen] = float("-inf")
    target_scores = scores.gather(1, targets[:, None])
    rank = (scores > target_scores).sum(1)  # 0-based; ties favour the target
    hit = rank < k
    ndcg = torch.where(hit, 1.0 / torch.log2(rank.float() + 2.0), torch.zeros_like(rank, dtype=torch.float))
    return {f"HR@{k}": hit.float().mean().item(), f"nDCG@{k}": ndcg.mean().item()}


@torch.no_grad()
def evaluate_recommender(model: nn.Module, data, split: str = "test", max_len: int = 200,
                         batch_size: int = 256, k: int = 10) -> dict[str, float]:
    """HR@k / nDCG@k of `model` on the leave-one-out `split` ('valid' or 'test')."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    inputs, targets = data.split_inputs(split, max_len)
    totals, count = {}, 0
    for start in range(0, len(targets), batch_size):
        x = inputs[start:start + batch_size].to(device)
        y = targets[start:start + batch_size].to(device)
        scores = model(x)[:, -1]
        for name, value in ranking_metrics(scores, y, x, k).items():
            totals[name] = totals.get(name, 0.0) + value * len(y)
        count += len(y)
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
