"""Named configurations of a distillation, one per data family and budget: `cpu`, a 50 × 20
summary that a 2-core CPU distills in under 30 minutes, and `paper`, the sizes of the paper's
tables. A preset is a value (`Preset`); `Preset.replace` changes any of its settings by name,
as the command line's explicit options and the benchmarks' variants do. Why each value is
what it is: docs/design.md, "Presets". No torch import (the command line's `--help` reads it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .._checks import require_int
from ..student_spec import StudentSizes
from .config import DistillConfig

FAMILIES = ("ml-100k", "ptb")  # an interaction log is distilled like ml-100k, a text like ptb
NAMES = ("cpu", "paper")


@dataclass(frozen=True)
class Preset:
    """Everything `farzi-fast distill` needs besides the data.

    Args:
        max_len: the students' sequence length (real rows hold max_len + 1 ids).
        student: the sizes of the student distilled with and validated by.
        config: the distillation's settings.
        validate_every: outer steps between validations of the summary (0: off, the last
            summary is kept); the best-validated summary is returned.
    """

    max_len: int
    student: StudentSizes
    config: DistillConfig
    validate_every: int

    def __post_init__(self) -> None:
        require_int("max_len", self.max_len, minimum=2)
        require_int("validate_every", self.validate_every, minimum=0)
        if self.config.size[1] > self.max_len:
            mu, xi = self.config.size
            raise ValueError(f"size {mu}x{xi} holds sequences longer than max_len "
                             f"{self.max_len}: the students could not read them")

    def replace(self, **changes: Any) -> Preset:
        """A copy with `changes` (setting name -> value) applied wherever each is defined:
        max_len, validate_every, a StudentSizes field or a DistillConfig field."""
        student_names = {f.name for f in dataclasses.fields(StudentSizes)}
        config_names = {f.name for f in dataclasses.fields(DistillConfig)}
        unknown = set(changes) - student_names - config_names - {"max_len", "validate_every"}
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}")
        config_changes = {k: v for k, v in changes.items() if k in config_names}
        return Preset(
            max_len=changes.get("max_len", self.max_len),
            student=dataclasses.replace(self.student, **{k: v for k, v in changes.items()
                                                         if k in student_names}),
            config=dataclasses.replace(self.config, **config_changes),
            validate_every=changes.get("validate_every", self.validate_every))

    def settings(self) -> dict:
        """Every setting by name, flat: what a run folder's config.json records."""
        return dict(max_len=self.max_len, **dataclasses.asdict(self.student),
                    **self.config.as_dict(), validate_every=self.validate_every)


# ML-100K, both budgets: inner loops that train as the evaluation students do (100 steps from
# one of 16 fresh initialisations, no pretraining: the teacher trains alone) and the teacher's
# labels half smoothed (room for the outer loop above them).
_ML_100K_CPU = Preset(
    max_len=50, student=StudentSizes(dim=50, heads=1, layers=2, dropout=0.2),
    config=DistillConfig(size=(50, 20), inner_steps=100, outer_steps=100, inner_lr=1e-2,
                         inner_eps=1e-4, outer_lr=0.1, outer_batch=256, teacher_share=1.0,
                         uniform_share=0.5, pretrained_students=16, pretrain_steps=0,
                         teacher_steps=400),
    validate_every=25)
# PTB: inner loops from a pool of two students pretrained on the text.
_PTB_CPU = Preset(
    max_len=20, student=StudentSizes(dim=64, heads=2, layers=2, dropout=0.1),
    config=DistillConfig(size=(50, 20), inner_steps=10, outer_steps=100, inner_lr=1e-2,
                         inner_eps=1e-8, outer_lr=1e-2, outer_batch=256, teacher_share=1.0,
                         uniform_share=0.0, pretrained_students=2, pretrain_steps=400,
                         teacher_steps=400),
    validate_every=25)

PRESETS: dict[str, dict[str, Preset]] = {
    "ml-100k": {
        "cpu": _ML_100K_CPU,
        # the same loops at the paper's sizes, labelled by a teacher trained for length 200
        "paper": _ML_100K_CPU.replace(max_len=200, size=(50, 150), teacher_steps=1000),
    },
    "ptb": {
        "cpu": _PTB_CPU,
        "paper": Preset(
            max_len=50, student=StudentSizes(dim=128, heads=4, layers=2, dropout=0.1),
            config=DistillConfig(size=(200, 50), inner_steps=50, outer_steps=1000,
                                 inner_lr=1e-2, inner_eps=1e-8, outer_lr=1e-2, outer_batch=256,
                                 teacher_share=1.0, uniform_share=0.0, pretrained_students=2,
                                 pretrain_steps=1000, teacher_steps=1000),
            validate_every=100),
    },
}


def preset(family: str, name: str) -> Preset:
    """The preset `name` of data family `family` ('ml-100k' or 'ptb')."""
    if family not in PRESETS:
        raise ValueError(f"family must be one of {list(PRESETS)}, got {family!r}")
    if name not in PRESETS[family]:
        raise ValueError(f"preset must be one of {sorted(PRESETS[family])}, got {name!r}")
    return PRESETS[family][name]
