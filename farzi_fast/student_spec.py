"""What names a student: its architecture and its sizes. No torch import (the command
line's `--help` reads it); `farzi_fast.training.Task.student` builds the module."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._checks import require_int

ARCHITECTURES = ("transformer", "gru", "cnn")


@dataclass(frozen=True)
class StudentSizes:
    """The sizes of the students a preset distills and scores with (`Task.student`)."""

    dim: int = field(metadata={"help": "embedding width"})
    heads: int = field(metadata={"help": "attention heads (Transformer students)"})
    layers: int = field(metadata={"help": "layers (blocks of the CNN)"})
    dropout: float = field(metadata={"help": "dropout rate"})

    def __post_init__(self) -> None:
        for name in ("dim", "heads", "layers"):
            require_int(name, getattr(self, name))
        if isinstance(self.dropout, bool) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout!r}")
