"""A run's expected wall time, from a probe of this machine: one teacher step, two inner
steps with their reverse pass, two validation steps and one ranking, timed on the run's own
students and data, multiplied by how many of each the run takes. The run's random numbers and
its students are left as they were."""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable

import torch
from torch import nn

from ..training.train import train_student
from .config import DistillConfig, RunOptions
from .outer_step import inner_loop
from .summary import FarziData

PROBE_INNER_STEPS = 2  # the difference of a 1-step and a 3-step loop
TEACHER_PROBE_STEPS = 6


@dataclasses.dataclass
class Expected:
    """Seconds each phase of a run is expected to take (validation: at most)."""

    teacher: float
    outer_loop: float
    validation: float

    @property
    def total(self) -> float:
        return self.teacher + self.outer_loop + self.validation


def _seconds_per_step(train_steps) -> float:
    """Seconds per step of `train_steps(callback)` over its steps after the first."""
    stamps: list[float] = []

    def stamp(step: int, loss: float) -> bool:
        stamps.append(time.perf_counter())
        return False

    train_steps(stamp)
    return (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)


def _like_the_start(train: torch.Tensor, config: DistillConfig, vocab: int) -> FarziData:
    """A summary padded where the run's start will be: the ends of real rows, half their
    mass on their ids (a padding position's logits are never computed, so on a log of short
    histories they are most of a summary and the probe must see them)."""
    mu, xi = config.size
    ids = train[torch.arange(mu) % len(train), -xi:]
    probs = 0.5 * nn.functional.one_hot(ids, vocab).float() + 0.5 / vocab
    return FarziData.from_distributions(probs, config.latent_dim, fit_steps=1)


def expected_seconds(student: nn.Module, train: torch.Tensor, config: DistillConfig, *,
                     teacher_steps: int, outer_steps: int, validations: int,
                     validation_steps: int, evaluations: int,
                     rank_once: Callable[[nn.Module], object]) -> Expected:
    """The probe (see the module docstring).

    Args:
        student: the run's first student (copied, never trained).
        train: the real rows the run distills.
        config: the run's configuration.
        teacher_steps, outer_steps: the teacher's steps and the outer steps still to run.
        validations: how many validations the run makes, each training `validation_steps`
            steps at most (per architecture: pass the sum) and ranking `evaluations` times.
        rank_once: `rank_once(model)` ranks the validation users once.

    Returns:
        Expected seconds of the teacher, the outer loop and the validations.
    """
    with torch.random.fork_rng(devices=[]):
        probe = copy.deepcopy(student)
        rows = train[:256]
        teacher = _seconds_per_step(lambda callback: train_student(
            probe, rows, steps=TEACHER_PROBE_STEPS, lr=config.pretrain_lr, callback=callback))
        vocab = int(student.vocab_size)  # type: ignore[arg-type]  # the students expose it
        summary = _like_the_start(train, config, vocab)
        summary.padding_id = getattr(student, "padding_id", None)
        summary = summary.to(next(student.parameters()).device)
        start = {n: p.detach().clone() for n, p in probe.named_parameters()}
        real = rows[:config.outer_batch].to(summary.meta[0].device)

        def loop_seconds(steps: int) -> float:
            began = time.perf_counter()
            inner_loop(probe, summary, dataclasses.replace(config, inner_steps=steps),
                       RunOptions(), start, real, summary.padding_id, 1, 0)
            return time.perf_counter() - began

        loop_seconds(1)  # warm-up
        one, more = loop_seconds(1), loop_seconds(1 + PROBE_INNER_STEPS)
        # a loop's time: its steps, and once per loop the outer loss and the reverse's set-up
        per_step = max(0.0, (more - one) / PROBE_INNER_STEPS)
        per_loop = max(0.0, one - per_step)
        soft = summary.soft().detach()
        fresh = copy.deepcopy(student)
        validation_step = _seconds_per_step(lambda callback: train_student(
            fresh, soft, steps=3, callback=callback))
        began = time.perf_counter()
        rank_once(fresh)
        ranking = time.perf_counter() - began
    loops = outer_steps * config.meta_batch
    return Expected(teacher=teacher_steps * teacher,
                    outer_loop=loops * (config.inner_steps * per_step + per_loop),
                    validation=validations * (validation_steps * validation_step
                                              + evaluations * ranking))
