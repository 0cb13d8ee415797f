"""What defines a distillation, as data: `DistillConfig` (the settings that determine the
summary), and `RunOptions` (how a run executes: device, checkpoints, processes; none of them
changes the summary).

Every setting is defined here once, with its default, its check and its help text (the
field's `metadata["help"]`). The command line builds its options from these fields and the
benchmarks read the same objects, so a new setting is one new field. No torch import: the
command line's `--help` reads this module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .._checks import require_int, require_positive

CONFIG_VERSION = 2
INITS = ("teacher", "random")
# "sgd": plain SGD inner loops, the paper's ablation; "adam": Adam. Both go through the
# engine.
INNER_OPTIMIZERS = ("adam", "sgd")


def setting(default: Any = dataclasses.MISSING, help: str = "", **metadata: Any) -> Any:
    """A dataclass field with its command-line help."""
    return field(default=default, metadata={"help": help, **metadata})


@dataclass(frozen=True)
class DistillConfig:
    """The settings that define a FarziData summary: two runs with equal configs, data and
    students give the same summary (up to float summation order across process counts).

    Immutable; `dataclasses.replace(config, outer_lr=0.03)` makes a changed copy. Every
    value is checked on construction and a bad one raises a ValueError naming the field.
    """

    size: tuple[int, int] = setting(help="μxξ: synthetic sequences x positions, e.g. 50x20")
    inner_steps: int = setting(help="optimizer steps of each inner loop (the student's "
                                     "training on the summary)")
    outer_steps: int = setting(help="outer steps: updates of the summary")
    latent_dim: int | None = setting(
        None, help="factorised summary Z·M of this rank; 0 or None: μ×ξ×V logits directly")
    inner_lr: float = setting(1e-2, help="learning rate of the inner loops")
    inner_eps: float = setting(
        1e-8, help="eps of the inner loops' Adam: larger values keep the meta-gradient from "
                   "being dominated by the parameters with the tiniest gradients "
                   "(docs/design.md, 'Inner eps')")
    outer_lr: float = setting(1e-2, help="learning rate of the outer Adam (cosine-decayed)")
    outer_batch: int = setting(256, help="real rows scoring each inner loop")
    meta_batch: int = setting(
        1, help="inner loops averaged per outer step; under torchrun split over the "
                "processes (must divide by their number)")
    init: str = setting("teacher", help="the start: 'teacher' (real sequences with the "
                                         "teacher's soft labels) or 'random' logits",
                         choices=INITS)
    teacher_share: float = setting(1.0, help="teacher's share of each initial position's "
                                              "distribution (0..1)")
    uniform_share: float = setting(
        0.0, help="share of each initial position's distribution spread evenly over the items "
                  "(0..1): room for the outer loop above the teacher's labels, and a softmax "
                  "it can move in one-hot rows")
    pretrained_students: int = setting(
        2, help="students trained on the real data whose checkpoints start the inner loops "
                "(0: every loop starts from one fresh initialisation)")
    pretrain_steps: int = setting(
        400, help="steps each pretrained student trains on the real data (0: the inner loops "
                  "start from fresh initialisations)")
    pretrain_every: int = setting(50, help="steps between checkpoints of a pretraining "
                                            "trajectory")
    pretrain_lr: float = setting(1e-3, help="learning rate of the pretrained students and "
                                             "the teacher")
    teacher_steps: int | None = setting(
        None, help="training steps of the teacher that labels the start: the first pretrained "
                   "student, trained on (>= pretrain_steps; None: pretrain_steps)")
    inner_optimizer: str = setting("adam", help="the inner loops' optimizer",
                                    choices=INNER_OPTIMIZERS)
    compile: bool = setting(
        False, help="run the inner loops' steps as torch.compile'd functions: faster after a "
                    "one-off compilation, rounded differently")
    seed: int = setting(0, help="seed of every random draw of the run")

    def __post_init__(self) -> None:
        size = self.size
        if (not isinstance(size, (tuple, list)) or len(size) != 2
                or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size)):
            raise ValueError(f"size must be (num_sequences, seq_len) of positive ints, got "
                             f"{size!r}")
        if size[1] < 2:
            raise ValueError(f"size must hold sequences of >= 2 positions (next-item targets), "
                             f"got {size[1]}")
        object.__setattr__(self, "size", (int(size[0]), int(size[1])))
        if self.latent_dim == 0:
            object.__setattr__(self, "latent_dim", None)
        if self.latent_dim is not None:
            require_int("latent_dim", self.latent_dim)
        for name in ("inner_steps", "outer_steps", "outer_batch", "pretrain_every",
                     "meta_batch"):
            require_int(name, getattr(self, name))
        for name in ("pretrained_students", "pretrain_steps", "seed"):
            require_int(name, getattr(self, name), minimum=0)
        if self.teacher_steps is not None:
            require_int("teacher_steps", self.teacher_steps)
            if self.pretrained_students and self.teacher_steps < self.pretrain_steps:
                raise ValueError(f"teacher_steps ({self.teacher_steps}) must be >= "
                                 f"pretrain_steps ({self.pretrain_steps}): the teacher is the "
                                 f"first pretrained student, trained on")
        for name in ("inner_lr", "inner_eps", "outer_lr", "pretrain_lr"):
            require_positive(name, getattr(self, name))
        for name in ("inner_optimizer", "init"):
            choices = field_metadata(name)["choices"]
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got "
                                 f"{getattr(self, name)!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be True or False, got {self.compile!r}")
        if self.compile and self.inner_optimizer != "adam":
            raise ValueError(f"compile=True compiles the engine's Adam steps; the "
                             f"{self.inner_optimizer!r} inner loop is unrolled by autograd")
        for name in ("teacher_share", "uniform_share"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, (int, float))
                                               and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must lie in [0, 1], got {value!r}")

    @property
    def teacher_training_steps(self) -> int:
        """Steps the default teacher trains: teacher_steps, or pretrain_steps when unset."""
        return self.pretrain_steps if self.teacher_steps is None else self.teacher_steps

    def check_processes(self, world: int) -> None:
        """Refuse a meta_batch the `world` processes cannot share evenly."""
        if self.meta_batch % world:
            raise ValueError(f"meta_batch ({self.meta_batch}) must be divisible by the number "
                             f"of processes ({world}): each runs the same number of inner "
                             f"loops")

    def as_dict(self) -> dict:
        """Plain JSON-ready values, field name -> value."""
        values = dataclasses.asdict(self)
        values["size"] = list(self.size)
        return values


@dataclass(frozen=True)
class RunOptions:
    """How a distillation runs; none of these changes the summary it returns.

    Args:
        device: where the students and the summary live (default: the first student's).
        checkpoint: a path; the full state is written there atomically every
            `checkpoint_every` outer steps and at the end.
        checkpoint_every: outer steps between checkpoints (0: only at the end).
        resume: continue exactly from `checkpoint` if it exists; a checkpoint written with
            another configuration, data or student is refused.
        process_group: the torch.distributed group whose ranks share the inner loops (default:
            the default group when one is initialised, e.g. by torchrun).
        check_every: outer steps between the ranks' checksum comparisons of the summary.
        anchor_every, anchor_head: the engine's anchors (`farzi_fast.unroll`).
        skip_nonfinite: outer steps in a row whose meta-gradient may come out not finite and
            be skipped, with a warning, before the run stops with the error.
    """

    device: Any = None
    checkpoint: Any = None
    checkpoint_every: int = 0
    resume: bool = False
    process_group: Any = None
    check_every: int = 10
    anchor_every: int | None = None
    anchor_head: int | None = None
    skip_nonfinite: int = 3

    def __post_init__(self) -> None:
        for name in ("checkpoint_every", "check_every", "skip_nonfinite"):
            require_int(name, getattr(self, name), minimum=0)
        if not isinstance(self.resume, bool):
            raise ValueError(f"resume must be True or False, got {self.resume!r}")


def field_metadata(name: str, of: type = DistillConfig) -> dict:
    """The metadata (help, choices) of field `name` of `of`."""
    return next(dict(f.metadata) for f in dataclasses.fields(of) if f.name == name)
