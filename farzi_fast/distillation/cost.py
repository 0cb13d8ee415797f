"""What a distillation will need, before it starts: an estimate of its peak memory from the
shapes that dominate it, the μ·ξ·V soft summary and the rows × length × V logits of the outer
loss and the teacher (docs/scale.md). No torch import."""

from __future__ import annotations

from .config import DistillConfig

TEACHER_BATCH = 128  # rows a teacher's training step scores (training.train_student)
FLOAT_BYTES = 4
BASE_BYTES = 0.4e9   # the interpreter, torch and the data


def peak_bytes(config: DistillConfig, max_len: int, vocab: int) -> float:
    """Estimated peak resident bytes of `distill(config)` over a vocabulary of `vocab` at
    students' length `max_len` (float32): about 8 copies of the summary's μ·ξ·V values in an
    inner step (logits, softmax, gradients, the reverse pass's), 2 of the outer loss's and of
    a teacher step's rows × length × V logits. Calibrated on Amazon Beauty (measured 2.6 GB,
    estimated 2.7 GB)."""
    mu, xi = config.size
    summary = 8 * mu * xi * vocab
    outer = 2 * config.outer_batch * max_len * vocab
    teacher = 2 * TEACHER_BATCH * max_len * vocab
    return BASE_BYTES + FLOAT_BYTES * (summary + outer + teacher)


def available_bytes() -> float | None:
    """The memory the system could give this process now (Linux MemAvailable), if known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None
