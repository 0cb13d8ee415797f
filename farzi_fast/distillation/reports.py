"""Reading a summary: its sequences as rows in the data's own ids (`farzi-fast export`), how
its mass compares with the real data's popularity, and the plots of a run and of a summary
(`farzi-fast inspect`)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..files import read_jsonl
from .summary import FarziData


def export_rows(farzi: FarziData, draws: int | None = None, seed: int = 0,
                top: int | None = None) -> list[dict]:
    """The synthetic sequences as rows: each position's most likely id (sequence, draw,
    position, id, item, title, probability), `draws` samples of every sequence, or each
    position's `top` most likely ids (sequence, position, rank, id, ...). Only the last keeps
    what the summary teaches, its distributions: hard sequences teach about as much as the
    same number of random real ones (docs/results.md)."""
    probs = farzi.soft().detach().cpu()
    if top is not None and top > probs.shape[-1]:
        raise ValueError(f"--top must be at most the summary's {probs.shape[-1]} ids, got {top}")
    names = farzi.vocabulary

    def row(sequence, position, token, **where):
        return {"sequence": sequence, **where, "position": position, "id": token,
                "item": names[token] if names else str(token),
                "title": farzi.titles[token] if farzi.titles else "",
                "probability": round(float(probs[sequence, position, token]), 6)}

    if top is not None:
        ranked = probs.topk(top, -1).indices
        return [row(sequence, position, token, rank=rank)
                for sequence, positions in enumerate(ranked.tolist())
                for position, tokens in enumerate(positions)
                for rank, token in enumerate(tokens)]
    if draws is None:
        ids = probs.argmax(-1).unsqueeze(0)
    else:
        generator = torch.Generator().manual_seed(seed)
        ids = torch.stack([farzi.sample(generator) for _ in range(draws)]).cpu()
    return [row(sequence, position, token, draw=draw)
            for draw, sample in enumerate(ids.tolist())
            for sequence, positions in enumerate(sample)
            for position, token in enumerate(positions)]


def popularity_comparison(farzi: FarziData, counts: torch.Tensor) -> dict:
    """How the summary spreads its mass over items compared with the real data: the share of
    each on the 10% most frequent real items, and the correlation of log frequencies."""
    mass = farzi.soft().detach().cpu().sum((0, 1))[1:].double()
    real = counts[1:].double()
    top = real.argsort(descending=True)[:max(1, len(real) // 10)]
    log_mass, log_real = (mass / mass.sum()).log(), (real + 1).log()
    correlation = torch.corrcoef(torch.stack([log_mass, log_real]))[0, 1]
    return {"summary_mass_on_top10pct": float(mass[top].sum() / mass.sum()),
            "real_mass_on_top10pct": float(real[top].sum() / real.sum()),
            "log_frequency_correlation": float(correlation)}


def plot_log(log_file: Path, png: Path, metric: str) -> None:
    """The meta-loss and the validation metric of a run's log.jsonl, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = read_jsonl(log_file)
    steps = [e for e in entries if "meta_loss" in e]
    valid = [e for e in entries if "valid" in e]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot([e["step"] for e in steps], [e["meta_loss"] for e in steps])
    ax1.set(xlabel="outer step", ylabel="meta-loss (real data)", title="meta-loss")
    ax2.plot([e["step"] for e in valid], [e["valid"][metric] for e in valid], marker="o")
    ax2.set(xlabel="outer step", ylabel=f"validation {metric}",
            title=f"student trained on the summary: {metric}")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def plot_inspection(entropy: torch.Tensor, probs: torch.Tensor, png: Path) -> None:
    """`entropy`: the mean per position (NaN where every sequence is padding, left as a gap);
    `probs`: the distributions of the positions that are not padding (N × V)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot(entropy.numpy(), marker="o")
    ax1.set(xlabel="position", ylabel="entropy (nats)", title="entropy per position")
    mass = probs.sum(0)
    ax2.plot(mass.sort(descending=True).values.numpy() / float(mass.sum()))
    ax2.set(xscale="log", yscale="log", xlabel="id rank", ylabel="share of the summary's mass",
            title="how the summary spreads its mass")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
