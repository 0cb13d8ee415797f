"""`farzi-fast inspect`: a short human reading of a summary (its sequences' most likely
items, entropy per position, popularity against the data's) and a PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ...data import RecommendationData
from ...distillation.reports import plot_inspection, popularity_comparison
from ..sources import check_vocabulary, data_preset, load_source, summary_of


def run(args) -> int:
    farzi, path = summary_of(args.run)
    task = (load_source(args, data_preset(args).max_len)
            if args.dataset or args.interactions or args.text else None)
    if task is not None:
        check_vocabulary(farzi, task, path)
    probs = farzi.soft().detach().cpu()
    entropy = farzi.position_entropy().cpu()  # μ × ξ, NaN at padding (logits are finite)
    data = ~entropy.isnan()
    names = farzi.vocabulary or [str(i) for i in range(farzi.vocab_size)]
    label = (lambda i: f"{names[i]} ({farzi.titles[i]})" if farzi.titles and farzi.titles[i]
             else names[i])
    mu, xi = farzi.size
    print(f"{path}: {mu} sequences x {xi} positions over {farzi.vocab_size} ids; mean entropy "
          f"{float(entropy.nanmean()):.2f} nats (uniform: "
          f"{float(torch.tensor(farzi.vocab_size).log()):.2f})"
          + (f"; {int((~data).sum())} positions are padding (id {farzi.padding_id}), left out"
             if farzi.padding_id is not None else ""))
    for sequence in range(min(mu, args.sequences)):
        real = data[sequence]
        count = int(real.sum())
        mass = probs[sequence, real].sum(0)
        top = mass.argsort(descending=True)[:args.top].tolist()
        print(f"  sequence {sequence} ({count} positions): " + ", ".join(
            f"{label(i)} {float(mass[i]) / max(1, count):.3f}" for i in top))
    per_position = entropy.nanmean(0)  # NaN where every sequence is padding
    print("entropy per position (mean over sequences): " + " ".join(
        "-" if math.isnan(e) else f"{e:.2f}" for e in per_position.tolist()))
    comparison = None
    if task is not None and isinstance(task.data, RecommendationData):
        comparison = popularity_comparison(farzi, task.data.item_counts())
        print("popularity: " + ", ".join(f"{k} {v:.3f}" for k, v in comparison.items()))
    png = Path(args.png) if args.png else path.with_name("inspect.png")
    plot_inspection(per_position, probs[data], png)
    print(json.dumps({"png": str(png), "popularity": comparison}))
    return 0
