"""The evaluation protocol every quality number comes from: a student trained **from
scratch** on a data source by one fixed recipe, the checkpoint picked on the validation
split, scored on the test split. Summaries and every baseline (random subsets, the
popularity summary, full data) go through the same function."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .._checks import require_int, require_positive
from .train import train_student


@dataclass(frozen=True)
class Recipe:
    """How a student is trained on any data source: AdamW at `lr`, batches of `batch_size`
    rows (all rows when there are fewer), validated every `eval_every` steps, stopped after
    `patience` validations without improvement or at `max_steps`."""
    lr: float = 1e-3
    batch_size: int = 128
    max_steps: int = 1500
    eval_every: int = 50
    patience: int = 6
    weight_decay: float = 0.0

    def __post_init__(self):
        require_positive("lr", self.lr)
        for name in ("batch_size", "max_steps", "eval_every", "patience"):
            require_int(name, getattr(self, name))
        require_positive("weight_decay", self.weight_decay, zero_ok=True)


# How a summary is scored while it is distilled (the command line's validations and the
# benchmarks'): a student trained from scratch on it for at most 600 steps, validated every 50.
VALIDATION = Recipe(max_steps=600, eval_every=50, patience=4)


@dataclass
class Fit:
    valid: dict             # validation metrics of the checkpoint chosen on validation
    step: int               # the step it was taken at
    steps_run: int
    student: nn.Module      # the student, holding that checkpoint
    test: dict | None = None


def fit(make_student: Callable[[], nn.Module], data: torch.Tensor, task,
        recipe: Recipe = Recipe(), seed: int = 0,
        on_step: Callable[[int], None] | None = None) -> Fit:
    """Train `make_student()` (a fresh, untrained model) on `data` (hard rows or soft
    sequences) by `recipe`, keeping the checkpoint that does best on the validation split.
    The global random state is left as it was; `on_step(step)` runs after every step (a
    progress display)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = make_student()
        sign = 1.0 if task.higher_is_better else -1.0
        best: dict = {"score": -float("inf"), "state": None, "valid": None, "step": 0}
        counters = {"since_best": 0, "last": 0}

        def validate(step, _loss):
            counters["last"] = step
            if on_step is not None:
                on_step(step)
            if step % recipe.eval_every and step != recipe.max_steps:
                return False
            valid = task.evaluate(student, "valid")
            score = sign * valid[task.metric]
            if score > best["score"]:
                best.update(score=score, state=copy.deepcopy(student.state_dict()),
                            valid=valid, step=step)
                counters["since_best"] = 0
            else:
                counters["since_best"] += 1
            return counters["since_best"] >= recipe.patience

        train_student(student, data, steps=recipe.max_steps, lr=recipe.lr,
                      batch_size=recipe.batch_size, weight_decay=recipe.weight_decay,
                      seed=seed, callback=validate)
    if best["state"] is None:  # every validation scored NaN
        raise FloatingPointError("no checkpoint had a finite validation score")
    student.load_state_dict(best["state"])
    return Fit(best["valid"], best["step"], counters["last"], student)


def fit_and_test(make_student: Callable[[], nn.Module], data: torch.Tensor, task,
                 recipe: Recipe = Recipe(), seed: int = 0) -> Fit:
    """`fit`, then the test metrics of the chosen checkpoint in `Fit.test`."""
    result = fit(make_student, data, task, recipe, seed)
    result.test = task.evaluate(result.student, "test")
    return result


def popularity_summary(counts: torch.Tensor, num_sequences: int, seq_len: int) -> torch.Tensor:
    """Soft sequences whose every position is the training item-frequency distribution: a
    summary that teaches popularity and nothing else (the bar a learned summary must clear)."""
    probs = counts.double() / counts.sum()
    return probs.float().expand(num_sequences, seq_len, -1).clone()
