"""The `cpu` preset fitted to an interaction log's shape: a teacher trained for the log's size,
and as many outer steps of the preset's inner loops as fit a wall-time budget on 2 CPU cores,
from a time model of each phase in the data's sizes (catalogue V, users, how many of each row's
positions hold a real event).

The model's constants were measured with `benchmarks/profile_distill.py` on MovieLens-100K
(V = 1,683, long histories) and Amazon Beauty (V = 12,102, histories of 9 events on average)
on a 2-core AMD EPYC VM; docs/scale.md has the measurements and how well the model predicts a
third log. Deterministic: the same log gets the same settings on any machine, so a run can be
resumed or repeated; `probe.expected_seconds` then says how long it takes on this one. No
torch import (the command line's planning reads it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .presets import Preset

TEACHER_BATCH = 128      # rows of a teacher or pretraining step (`train_student`'s default)
VALIDATION_STEPS = 600   # at most, per validation (`training.VALIDATION`; a test pins both)
VALIDATION_RANKINGS = 12  # evaluations of a validation student (600 steps, every 50)
# Users a validation ranks: a fixed sample of a large log (every user of a smaller one);
# reported numbers rank every user.
VALIDATION_USERS = 2000
SMALLEST_BUDGET_MIN = 8.0   # minutes for a log of a few items
LARGEST_BUDGET_MIN = 25.0   # minutes for a catalogue of LARGE_CATALOGUE items and more
LARGE_CATALOGUE = 25_000
FEWEST_OUTER_STEPS = 8
TEACHER_EPOCHS = 8        # passes over the log's rows the teacher makes at least...
MOST_TEACHER_STEPS = 1500  # ...within the steps an evaluation student may train


@dataclass(frozen=True)
class LogShape:
    """What the time of a distillation depends on, read from an interaction log.

    Args:
        users: users with a training history.
        items: distinct items (the catalogue V is items + 1, with padding).
        history_lengths: each user's number of training events.
        validation_users: users a validation ranks (the command line's sample).
    """

    users: int
    items: int
    history_lengths: Sequence[int]
    validation_users: int

    @property
    def vocab(self) -> int:
        return self.items + 1

    def real_targets(self, positions: int) -> float:
        """The mean number of real next-item targets in a row of `positions` ids cut from the
        end of a user's history (the rest is padding, whose logits are never computed)."""
        return sum(max(0, min(n, positions) - 1) for n in self.history_lengths) / max(
            1, len(self.history_lengths))


@dataclass(frozen=True)
class SecondsModel:
    """Seconds of each unit of a run on the reference machine (2 cores), as constants plus
    costs per logit cell (a position times the catalogue)."""

    inner_step: float = 0.10          # the students' V-free work on the summary
    summary_cell: float = 1.1e-8      # per μ·ξ·V: soft inputs, their gradient
    target_cell: float = 3.0e-8       # per real target × V: logits, softmax, their reverse
    outer_loss: float = 0.40          # once per loop, plus its cells
    outer_cell: float = 2.0e-8
    teacher_step: float = 0.30
    teacher_cell: float = 5.0e-9
    validation_step: float = 0.045
    validation_cell: float = 1.7e-9   # per μ·ξ·V of the summary it trains on
    ranking: float = 0.20
    ranking_cell: float = 1.2e-8      # per user ranked × V

    def outer_step(self, preset: Preset, shape: LogShape) -> float:
        config = preset.config
        mu, xi = config.size
        v = shape.vocab
        step = (self.inner_step + self.summary_cell * mu * xi * v
                + self.target_cell * mu * shape.real_targets(xi) * v)
        loop = (self.outer_loss + self.outer_cell * config.outer_batch
                * shape.real_targets(preset.max_len + 1) * v)
        return config.meta_batch * (config.inner_steps * step + loop)

    def teacher(self, preset: Preset, shape: LogShape) -> float:
        cells = TEACHER_BATCH * shape.real_targets(preset.max_len + 1) * shape.vocab
        return preset.config.teacher_training_steps * (self.teacher_step
                                                       + self.teacher_cell * cells)

    def validation(self, preset: Preset, shape: LogShape) -> float:
        """One validation at most: a student's steps on the summary and its rankings."""
        mu, xi = preset.config.size
        training = VALIDATION_STEPS * (self.validation_step
                                       + self.validation_cell * mu * xi * shape.vocab)
        ranked = min(shape.validation_users, shape.users)
        return training + VALIDATION_RANKINGS * (self.ranking
                                                 + self.ranking_cell * ranked * shape.vocab)


REFERENCE = SecondsModel()


@dataclass(frozen=True)
class Fitted:
    """A preset fitted to a log: the settings, the budget it was fitted to and what the time
    model expects of it (seconds on the reference machine)."""

    preset: Preset
    budget: float
    expected: float
    changed: dict


def budget_seconds(shape: LogShape) -> float:
    """The wall time a `cpu` distillation of this log may take on 2 cores: 8 minutes for a
    small catalogue, growing with V to 25 minutes at 25,000 items and beyond."""
    share = min(1.0, shape.vocab / LARGE_CATALOGUE)
    return 60 * (SMALLEST_BUDGET_MIN + (LARGEST_BUDGET_MIN - SMALLEST_BUDGET_MIN) * share)


def fit_to_log(preset: Preset, shape: LogShape, fixed: Sequence[str] = (),
               model: SecondsModel = REFERENCE) -> Fitted:
    """`preset` fitted to a log, each setting unless named in `fixed` (given by the user):
    - `teacher_steps`: at least TEACHER_EPOCHS passes over the log's rows, at most
      MOST_TEACHER_STEPS (a large log's teacher otherwise sees each user about twice);
    - `outer_steps`: as many as fit `budget_seconds(shape)` after the teacher and the
      validations, at most the preset's, and `validate_every` a quarter of them;
    - `uniform_share` 0 when the outer steps were cut: the start is then most of what the
      summary is, and the teacher's labels as they are make a better one (the smoothing only
      gives the outer loop room above them).

    Returns:
        The fitted preset, its budget, the model's expected seconds and what changed.
    """
    config = preset.config
    changes: dict = {}
    if "teacher_steps" not in fixed:
        passes = -(-TEACHER_EPOCHS * shape.users // TEACHER_BATCH)
        steps = max(config.teacher_training_steps, min(MOST_TEACHER_STEPS, passes))
        if steps != config.teacher_training_steps:
            changes["teacher_steps"] = steps
    fitted = preset.replace(**changes)
    budget = budget_seconds(shape)
    validations = 5  # the start's and 4 more
    if "outer_steps" not in fixed:
        left = budget - model.teacher(fitted, shape) - validations * model.validation(
            fitted, shape)
        fits = int(left // model.outer_step(fitted, shape))
        steps = max(FEWEST_OUTER_STEPS, min(config.outer_steps, fits))
        if steps != config.outer_steps:
            changes["outer_steps"] = steps
            if "validate_every" not in fixed and preset.validate_every:
                changes["validate_every"] = -(-steps // 4)  # the start's and 4 more
            if "uniform_share" not in fixed and config.uniform_share:
                changes["uniform_share"] = 0.0
    fitted = preset.replace(**changes)
    steps, every = fitted.config.outer_steps, fitted.validate_every
    runs = (1 + -(-steps // every)) if every else 0  # the last step validates too
    expected = (model.teacher(fitted, shape) + steps * model.outer_step(fitted, shape)
                + runs * model.validation(fitted, shape))
    return Fitted(fitted, budget, expected, changes)


def log_shape(train_sequences: Sequence, items: int, validation_users: int) -> LogShape:
    """The LogShape of a log's training sequences (anything with a len each)."""
    return LogShape(len(train_sequences), items, tuple(len(s) for s in train_sequences),
                    validation_users)
