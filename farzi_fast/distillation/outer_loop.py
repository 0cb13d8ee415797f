"""`distill()`: optimise a FarziData summary so that students trained on it for a few
optimizer steps do well on real data (Farzi Data, Sachdeva et al., arXiv 2310.09983).

The stages, each in its own module:
1. start (`start.py`): the pool of student weights the inner loops start from, the teacher,
   and the summary the outer loop starts from (teacher-labelled real sequences);
2. each outer step (`outer_step.py`): draw every inner loop's start and real batch, run the
   inner loops through `farzi_fast.unroll` (memory independent of their length), all-reduce
   their meta-gradients over the ranks, take one outer Adam step on the summary;
3. validation: with a `validate` function the summary is scored every `validate_every`
   outer steps and the best one is returned;
4. checkpoint (`checkpoint.py`): the whole state, atomically, for an exact resume.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from .._checks import require_int
from .checkpoint import RunState, load_checkpoint, run_identity, save_checkpoint
from .config import DistillConfig, RunOptions
from .outer_step import apply_update, outer_lr, run_outer_step, skip_nonfinite
from .parallel import Ranks, checksum
from .start import Progress, initial_summary, pretrained_pool
from .summary import FarziData

Validate = Callable[[int, FarziData], float]
Callback = Callable[[int, float, FarziData], None]


def distill(students: nn.Module | list[nn.Module], train: torch.Tensor,
            config: DistillConfig, run: RunOptions | None = None, *,
            teacher: nn.Module | None = None, validate: Validate | None = None,
            validate_every: int = 0, callback: Callback | None = None,
            progress: Progress | None = None) -> FarziData:
    """Distill real sequences into a FarziData summary of `config.size`.

    Args:
        students: a module, or a list of modules over the same vocabulary (e.g. SASRec and
            GRU4Rec) that the inner loops take turns with, loop after loop, each from its own
            pool of starts. The first makes the default teacher. Each must expose
            `vocab_size` (and `padding_id` if it pads), as `farzi_fast.models` do.
        train: long tensor of real rows, rows × (L + 1) ids (0 pads recommendation rows).
        config: what defines the summary (`DistillConfig`).
        run: how the run executes: device, checkpoint, resume, process group
            (`RunOptions`; default: `RunOptions()`); none of it changes the summary.
        teacher: a model over the same vocabulary whose next-item distributions label the
            initial sequences (default: the first pretrained student, trained on).
        validate: `validate(step, farzi) -> score` (higher is better), run at the start,
            every `validate_every` outer steps and at the end, without touching the run's
            random numbers; the best-scoring summary is returned. Under torch.distributed
            only rank 0 calls it.
        validate_every: outer steps between validations (0: at the start and end only).
        callback: `callback(step, meta_loss, farzi)` after every outer step, on every rank.
        progress: `progress(phase, done, total)` during the start's phases ("pretrained
            students", "teacher"), step by step, for a progress display.

    Returns:
        The summary (the best validated one with `validate`, else the last), with
        `selected_step` (the outer step it comes from) and `skipped_steps` (outer steps whose
        meta-gradient was not finite and was skipped).

    Raises:
        ValueError: students or data that do not fit, or a checkpoint written for another
            configuration, data or students.
        FloatingPointError: a meta-loss that is not finite, or more than
            `run.skip_nonfinite` non-finite meta-gradients in a row.
        RankMismatchError: ranks that disagree on the configuration or drifted apart.

    Inside a torch.distributed process group the `meta_batch` inner loops of each outer step
    are split over the ranks and their meta-gradients all-reduced: every random draw belongs
    to an (outer step, loop) pair, not to a rank, so the summary does not depend on the
    number of ranks (up to float summation order). Only rank 0 validates and writes the
    checkpoint; every `run.check_every` outer steps the ranks compare a checksum.
    """
    run = RunOptions() if run is None else run
    validate_every = require_int("validate_every", validate_every, minimum=0)
    students, vocab, ranks, device = _prepare(students, train, config, run)
    dtype = next(students[0].parameters()).dtype  # the summary follows the students' precision
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    identity = run_identity(students, train)
    # every rank must ask for validation alike (rank 0 runs it, the others receive its score)
    ranks.agree("configuration, data and student", [config.as_dict(), identity,
                                                    validate is not None, validate_every,
                                                    run.check_every])
    state = _resumed(run, config, identity, vocab, students, device, dtype, generator)
    if state is None:
        state = _fresh_start(students, train, config, teacher, vocab, device, dtype, ranks,
                             generator, progress)
    farzi = state.summary
    optimizer = torch.optim.Adam(farzi.meta, lr=config.outer_lr)
    if state.step:
        optimizer.load_state_dict(state.optimizer)
    first = state.step + 1

    def consider(step: int) -> None:
        """Validate the current summary (on rank 0); keep it if it is the best so far."""
        score = None
        assert validate is not None
        if ranks.leader:
            with torch.random.fork_rng(devices=[]):  # the run's randomness stays untouched
                score = float(validate(step, farzi))
        score = ranks.from_leader(score)
        best = state.best
        if best["score"] is None or score > best["score"]:
            best.update(score=score, step=step, summary=copy.deepcopy(farzi).cpu())

    if validate is not None and first == 1:
        consider(0)
    for step in range(first, config.outer_steps + 1):
        for group in optimizer.param_groups:  # a function of the step alone
            group["lr"] = outer_lr(config, step)
        result = run_outer_step(students, farzi, train, state.pool, config, run, ranks, step,
                                generator)
        if not math.isfinite(result.meta_loss):
            raise FloatingPointError(f"meta-loss is {result.meta_loss} at outer step {step}; "
                                     f"the last checkpoint was left as it was")
        if result.finite:
            apply_update(farzi, optimizer, result, step, first=step == first)
        else:
            skip_nonfinite(result, config, run, step, state.skipped)
        state.history.append(result.meta_loss)
        state.step = step
        last = step == config.outer_steps
        if validate is not None and validate_every and (step % validate_every == 0 or last):
            consider(step)
        if callback is not None:
            with torch.random.fork_rng(devices=[]):
                callback(step, result.meta_loss, farzi)
        if run.check_every and (step % run.check_every == 0 or last):
            ranks.agree(f"summary after outer step {step} (checksum)", checksum(farzi.meta))
        if ranks.leader and run.checkpoint is not None and (
                last or (run.checkpoint_every and step % run.checkpoint_every == 0)):
            state.optimizer = optimizer.state_dict()
            state.sampler_rng, state.torch_rng = generator.get_state(), torch.get_rng_state()
            save_checkpoint(run.checkpoint, config, identity, state)
    if state.best["summary"] is not None:
        farzi = state.best["summary"].to(device)
    farzi.selected_step = state.best["step"] if validate is not None else config.outer_steps
    farzi.skipped_steps = state.skipped
    return farzi


def _prepare(students, train: torch.Tensor, config: DistillConfig,
             run: RunOptions) -> tuple[list[nn.Module], int, Ranks, torch.device]:
    """The checked arguments: the students as a list on the run's device, their shared
    vocabulary, and the ranks the run is split over."""
    if not isinstance(config, DistillConfig):
        raise TypeError(f"config must be a DistillConfig, got {type(config).__name__}")
    if not isinstance(run, RunOptions):
        raise TypeError(f"run must be a RunOptions, got {type(run).__name__}")
    students = _as_list(students)
    vocab = _check_students(students, train)
    ranks = Ranks.of(run.process_group)
    config.check_processes(ranks.world)
    device = torch.device(run.device) if run.device is not None else \
        next(students[0].parameters()).device
    return [s.to(device) for s in students], vocab, ranks, device


def _resumed(run: RunOptions, config: DistillConfig, identity: dict, vocab: int,
             students: list[nn.Module], device: torch.device, dtype: torch.dtype,
             generator: torch.Generator) -> RunState | None:
    """The state of the checkpoint a resumed run continues from, on the run's device with
    its random streams restored; None when there is none to resume."""
    if not run.resume or run.checkpoint is None:
        return None
    padding_id = getattr(students[0], "padding_id", None)
    state = load_checkpoint(run.checkpoint, config, identity, vocab, padding_id)
    if state is None:
        return None
    state.pool = [{n: t.to(device) for n, t in p.items()} for p in state.pool]
    state.summary = state.summary.to(device, dtype)
    generator.set_state(state.sampler_rng)
    torch.set_rng_state(state.torch_rng)
    return state


def _fresh_start(students: list[nn.Module], train: torch.Tensor, config: DistillConfig,
                 teacher: nn.Module | None, vocab: int, device: torch.device,
                 dtype: torch.dtype, ranks: Ranks, generator: torch.Generator,
                 progress: Progress | None) -> RunState:
    """The state before the first outer step: every student's pool of starts (the first
    student's first: it makes the teacher) and the initial summary; rank 0's for all."""
    pool = [{n: t.to(device) for n, t in p.items()}
            for s in students for p in pretrained_pool(s, train, config, progress)]
    farzi = initial_summary(students[0], train.to(device), config, pool, teacher, vocab,
                            generator, progress).to(device, dtype)
    # pretraining need not be bitwise reproducible across ranks: rank 0's is everyone's
    ranks.broadcast_([t for p in pool for t in p.values()] + [t.data for t in farzi.meta])
    return RunState(step=0, summary=farzi, optimizer={},
                    best={"score": None, "step": 0, "summary": None},
                    sampler_rng=generator.get_state(), torch_rng=torch.get_rng_state(),
                    history=[], skipped=[], pool=pool)


def _as_list(student) -> list[nn.Module]:
    """`students` as a list: one module, or a list or tuple of them (architectures the inner
    loops take turns with)."""
    students = list(student) if isinstance(student, (list, tuple)) else [student]
    if not students:
        raise ValueError("students must be an nn.Module or a non-empty list of them, got an "
                         "empty list")
    return students


def _check_students(students: list, train: torch.Tensor) -> int:
    """The vocabulary every student shares with `train`; refuses students that differ in
    vocabulary, padding id or dtype (one summary feeds them all)."""
    vocab = _check_student(students[0], train)
    first = students[0]
    for i, other in enumerate(students[1:], 1):
        _check_student(other, train)
        for what, value in (("vocab_size", lambda m: m.vocab_size),
                            ("padding_id", lambda m: getattr(m, "padding_id", None)),
                            ("dtype", lambda m: next(m.parameters()).dtype)):
            if value(other) != value(first):
                raise ValueError(f"student[{i}] has {what} {value(other)!r}, student[0] "
                                 f"{value(first)!r}: the students must share it")
    return vocab


def _check_student(student, train: torch.Tensor):
    if not isinstance(student, nn.Module):
        raise TypeError(f"student must be an nn.Module, got {type(student).__name__}")
    if not isinstance(train, torch.Tensor) or train.dtype != torch.long or train.dim() != 2:
        raise TypeError("train must be a long tensor of real sequences, rows × (L+1) ids")
    if train.shape[1] < 2 or len(train) == 0:
        raise ValueError(f"train must hold sequences of >= 2 ids, got shape {tuple(train.shape)}")
    vocab = getattr(student, "vocab_size", None)
    if not isinstance(vocab, int):
        raise ValueError("student must expose vocab_size (as farzi_fast.models do)")
    if int(train.max()) >= vocab or int(train.min()) < 0:
        raise ValueError(f"train holds ids in [{int(train.min())}, {int(train.max())}] but the "
                         f"student's vocabulary is {vocab}: they must match")
    return vocab
