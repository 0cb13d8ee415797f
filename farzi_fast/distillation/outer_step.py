"""One outer step of a distillation: draw each inner loop's start and real batch, run the
inner loops through the engine (their meta-gradients), all-reduce them over the ranks, and
move the summary with the outer Adam (docs/design.md, "The outer step")."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from ..engine import NonFiniteError, unroll
from ..models import SequenceStudent
from ..training.train import SoftBatch, hard_loss, soft_batch_loss, split_soft
from .config import DistillConfig, RunOptions
from .parallel import Ranks
from .summary import FarziData


@dataclass
class OuterStep:
    """What one outer step found: the mean meta-loss of its inner loops, the mean
    meta-gradient (one tensor per summary tensor), and the largest relative drift of the
    engine's reconstructed states that an anchor corrected (NaN: states lost)."""

    meta_loss: float
    grads: list
    drift: float

    @property
    def finite(self) -> bool:
        return all(bool(g.isfinite().all()) for g in self.grads)


def outer_lr(config: DistillConfig, step: int) -> float:
    """The outer learning rate at outer step `step` (from 1): cosine decay to 0."""
    return config.outer_lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / config.outer_steps))


def draw_loops(config: DistillConfig, starts_per_student: int, rows: int,
               generator: torch.Generator) -> list[tuple[int, torch.Tensor]]:
    """Every inner loop's (start index in its student's pool, real rows) for one outer step,
    drawn by every rank in the same order as one process would."""
    return [(int(torch.randint(starts_per_student, (1,), generator=generator)),
             torch.randint(rows, (min(config.outer_batch, rows),), generator=generator))
            for _ in range(config.meta_batch)]


def run_outer_step(students: list[nn.Module], farzi: FarziData, train: torch.Tensor,
                   pool: list, config: DistillConfig, run: RunOptions, ranks: Ranks,
                   step: int, generator: torch.Generator) -> OuterStep:
    """The meta-gradient of outer step `step`: this rank's share of the inner loops, summed
    over the ranks and averaged. Loop `loop` trains students[(step-1)·meta_batch + loop mod
    len(students)] from its own pool of starts."""
    per_student = len(pool) // len(students)
    device = farzi.meta[0].device
    padding_id = farzi.padding_id
    draws = draw_loops(config, per_student, len(train), generator)
    grads = [torch.zeros_like(p) for p in farzi.meta]
    total = torch.zeros((), dtype=torch.float64, device=device)
    drift = 0.0  # of this process's loops
    for loop in ranks.share(config.meta_batch):
        start_index, rows = draws[loop]
        turn = ((step - 1) * config.meta_batch + loop) % len(students)
        loss, loop_grads, loop_drift = inner_loop(
            students[turn], farzi, config, run, pool[turn * per_student + start_index],
            train[rows].to(device), padding_id, step, loop)
        total += loss
        if math.isnan(loop_drift) or loop_drift > drift:  # NaN (states lost) stays
            drift = loop_drift
        for acc, grad in zip(grads, loop_grads):
            acc += grad
    ranks.sum_([total, *grads])
    return OuterStep(float(total) / config.meta_batch,
                     [g / config.meta_batch for g in grads], drift)


def loop_seed(seed: int, step: int, loop: int) -> int:
    """The random seed of inner loop `loop` of outer step `step` (its dropout masks): the
    same whichever rank runs it."""
    return (seed * 1_000_003 + step) * 1_009 + loop


def inner_loop(student: nn.Module, farzi: FarziData, config: DistillConfig, run: RunOptions,
               init: dict, real: torch.Tensor, padding_id: int | None, step: int,
               loop: int) -> tuple[torch.Tensor, tuple, float]:
    """One inner loop from the weights `init` on the summary, scored on the real rows `real`.

    Returns:
        (meta-loss, its gradient with respect to the summary's tensors, the largest relative
        drift of the engine's reconstructed states that an anchor corrected: 0 for SGD
        loops, unrolled by autograd).

    Raises:
        FloatingPointError: the inner loop's loss or states are not finite.
    """
    by_position = isinstance(student, SequenceStudent)

    def inner_loss(f, t, inputs, targets):
        return soft_batch_loss(f, SoftBatch(inputs, batch.real, targets),
                               by_position=by_position)

    device = real.device
    # The soft sequences are computed and split once per loop, not at each of its steps and
    # their reverse: the engine differentiates the loop with respect to the split tensors,
    # and one softmax and slicing carry that gradient to the summary's tensors.
    batch = split_soft(farzi.soft(), padding_id)
    meta = (batch.inputs, batch.targets)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(loop_seed(config.seed, step, loop))
        try:
            if config.inner_optimizer == "sgd":
                sgd = torch.optim.SGD([p for p in student.parameters() if p.requires_grad],
                                      lr=config.inner_lr)
                trained = unroll(student, inner_loss, config.inner_steps, meta=meta,
                                 init=init, anchor_every=run.anchor_every, optimizer=sgd)
            else:
                trained = unroll(student, inner_loss, config.inner_steps, meta=meta,
                                 lr=config.inner_lr, eps=config.inner_eps, init=init,
                                 anchor_every=run.anchor_every, anchor_head=run.anchor_head,
                                 compile=config.compile)
        except NonFiniteError as error:
            raise FloatingPointError(f"outer step {step}, inner loop: {error}; the last "
                                     f"checkpoint was left as it was") from None
        meta_loss = hard_loss(
            lambda x, **positions: functional_call(student, dict(trained), (x,), positions),
            real, padding_id, by_position=by_position)
        grads = torch.autograd.grad(meta_loss, farzi.meta)
    report = getattr(trained, "report", None)
    return meta_loss.detach().double(), grads, report.max_anchor_drift if report else 0.0


def apply_update(farzi: FarziData, optimizer: torch.optim.Optimizer, result: OuterStep,
                 step: int, first: bool) -> None:
    """One outer Adam step along the mean meta-gradient; on a run's `first` step, a warning
    if it moved nothing."""
    for p, grad in zip(farzi.meta, result.grads):
        p.grad = grad
    before = farzi.soft().detach() if first else None
    optimizer.step()
    if before is not None and torch.equal(before, farzi.soft().detach()):
        # e.g. one-hot rows (teacher_share=0): logits at log(eps²), a saturated softmax
        # whose meta-gradient (~1e-14 of the real items') moves nothing a float holds
        warnings.warn(f"outer step {step} moved no soft token of the summary: its softmax "
                      f"is saturated (one-hot rows, as teacher_share=0 makes, have logits "
                      f"at log(eps²) of the float) and the outer loop cannot move it; give "
                      f"the start some soft mass (teacher_share or uniform_share > 0)",
                      RuntimeWarning, stacklevel=3)


def skip_nonfinite(result: OuterStep, config: DistillConfig, run: RunOptions, step: int,
                   skipped: list[int]) -> None:
    """Record outer step `step`, whose meta-gradient is not finite, as skipped, with a
    warning; raise once more than `run.skip_nonfinite` steps in a row were.

    Raises:
        FloatingPointError: too many non-finite meta-gradients in a row.
    """
    drift = result.drift
    # a reconstruction off by more than its own size: the trajectory amplifies rounding, and
    # float32 meta-gradients lose every digit there, unrolled autograd's too
    off = "NaN" if math.isnan(drift) else f"off by up to {drift:.2g} times their size"
    chaotic = (f"; the reverse pass found reconstructed states {off}: the inner loop is "
               f"chaotic at inner_lr {config.inner_lr} and inner_steps {config.inner_steps}, "
               f"lower either" if not drift <= 1 else "")
    problem = (f"the meta-gradient at outer step {step} is not finite (the meta-loss, "
               f"{result.meta_loss:.6g}, is){chaotic}")
    skipped.append(step)
    in_a_row = _ending_run(skipped)
    if in_a_row > run.skip_nonfinite:
        raise FloatingPointError(f"{problem}, {in_a_row} outer steps in a row "
                                 f"(skip_nonfinite={run.skip_nonfinite}); the summary was "
                                 f"not updated and the last checkpoint was left as it was")
    warnings.warn(f"{problem}: outer step skipped, the summary left as it was ({in_a_row} in "
                  f"a row; the run stops after {run.skip_nonfinite})", RuntimeWarning,
                  stacklevel=3)


def _ending_run(steps: list[int]) -> int:
    """How many of the last `steps` (increasing) are consecutive, ending with the last."""
    run = 1
    while run < len(steps) and steps[-run - 1] == steps[-1] - run:
        run += 1
    return run
