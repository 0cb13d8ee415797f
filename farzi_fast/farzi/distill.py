"""`distill()`: optimise a FarziData summary so that students trained on it for a few Adam
steps do well on real data (Sachdeva et al., arXiv 2310.09983).

1. Pretrained trajectories: students trained on the real data, checkpointed along the way.
   They give the inner loops their starting points; the first, trained on to
   `teacher_steps`, is the default teacher.
2. Initialisation: μ real sequences (their last ξ items), each position's one-hot item mixed
   with the teacher's next-item distribution at that point of the sequence (soft labels:
   `teacher_share` of the mass), and `uniform_share` of it spread evenly over the items (a
   softmax the outer loop can move: one-hot rows are saturated). The teacher's quality bounds
   the summary's. Starting from random logits, as the paper does, the outer loop never even
   reaches the popularity summary on a CPU budget (benchmarks/NOTES.md).
3. Each outer step: draw a start point from the pool, train the student on the soft
   sequences for `inner_steps` Adam steps through `farzi_fast.unroll` (memory independent
   of inner_steps; `inner_optimizer="sgd"`, the paper's ablation, unrolls plain SGD with
   autograd instead), score it on a batch of real sequences, take one Adam step on the
   summary with the meta-gradient (learning rate decayed along a cosine).
4. With a `validate` function, the summary is scored every `validate_every` outer steps
   (and at the start) and the best one is returned, not the last.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from .._checks import require_int, require_positive
from ..engine import NonFiniteError, unroll, unrolled_sgd
from .files import atomic_save, content_digest, safe_load
from .parallel import Ranks, checksum
from .summary import FarziData
from .train import hard_loss, soft_loss, train_student

CHECKPOINT_FORMAT = "farzi_fast.distill-checkpoint"
INITS = ("teacher", "random")
# "sgd" is the paper's ablation: plain SGD inner loops, by unrolled autograd (memory grows
# with inner_steps); "adam" goes through the engine.
INNER_OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class DistillConfig:
    size: tuple[int, int]          # (μ sequences, ξ positions)
    latent_dim: int | None         # None: optimise μ × ξ × V logits directly
    inner_steps: int
    outer_steps: int
    inner_lr: float = 1e-2
    # the inner Adam's eps. Its update's derivative with respect to a gradient g is about
    # 1/(|g| + eps), so with torch's 1e-8 the meta-gradient is dominated by the parameters
    # whose gradients are tiniest (rare items), and two inner loops that differ only in their
    # dropout masks give orthogonal meta-gradients (benchmarks/NOTES.md, session 14)
    inner_eps: float = 1e-8
    outer_lr: float = 1e-2
    outer_batch: int = 256
    temperature: float = 1.0
    init: str = "teacher"          # "teacher" (real sequences, soft labels) or "random"
    teacher_share: float = 1.0     # the teacher's part of each position's distribution
    # the part of each position's mass spread evenly over the items, after the teacher's and
    # the real item's: one-hot rows (teacher_share=0) are a saturated softmax whose
    # meta-gradient is ~1e-38, so without it the outer loop cannot move them
    uniform_share: float = 0.0
    pretrained_students: int = 2
    pretrain_steps: int = 400
    pretrain_every: int = 50       # checkpoint spacing along each pretraining trajectory
    pretrain_lr: float = 1e-3
    # steps of the default teacher (the first pretrained student, trained on past the pool's
    # pretrain_steps); None: pretrain_steps. A teacher's quality bounds the summary's
    teacher_steps: int | None = None
    seed: int = 0
    inner_optimizer: str = "adam"
    meta_batch: int = 1            # inner loops averaged per outer step (split over ranks)
    # the engine's torch.compile'd steps (unroll(compile=True)): same math, rounded apart
    compile: bool = False
    # outer steps in a row whose meta-gradient may come out not finite (float32 rounding on a
    # rare trajectory: once in 119 outer steps of the paper preset) and be skipped, the
    # summary left as it was, before the run stops with the error
    skip_nonfinite: int = 3

    def __post_init__(self):
        if (not isinstance(self.size, (tuple, list)) or len(self.size) != 2
                or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.size)):
            raise ValueError(f"size must be (num_sequences, seq_len) of positive ints, got "
                             f"{self.size!r}")
        if self.size[1] < 2:
            raise ValueError(f"seq_len must be >= 2 (next-item targets), got {self.size[1]}")
        if self.latent_dim is not None:
            require_int("latent_dim", self.latent_dim)
        for name in ("inner_steps", "outer_steps", "outer_batch", "pretrain_every",
                     "meta_batch"):
            require_int(name, getattr(self, name))
        for name in ("pretrained_students", "pretrain_steps", "skip_nonfinite"):
            require_int(name, getattr(self, name), minimum=0)
        if self.teacher_steps is not None:
            require_int("teacher_steps", self.teacher_steps)
            if self.pretrained_students and self.teacher_steps < self.pretrain_steps:
                raise ValueError(f"teacher_steps ({self.teacher_steps}) must be >= "
                                 f"pretrain_steps ({self.pretrain_steps}): the teacher is the "
                                 f"first pretrained student, trained on")
        for name in ("inner_lr", "inner_eps", "outer_lr", "temperature", "pretrain_lr"):
            require_positive(name, getattr(self, name))
        if self.inner_optimizer not in INNER_OPTIMIZERS:
            raise ValueError(f"inner_optimizer must be one of {INNER_OPTIMIZERS}, got "
                             f"{self.inner_optimizer!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be True or False, got {self.compile!r}")
        if self.compile and self.inner_optimizer != "adam":
            raise ValueError(f"compile=True compiles the engine's Adam steps; the "
                             f"{self.inner_optimizer!r} inner loop is unrolled by autograd")
        for name in ("teacher_share", "uniform_share"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must lie in [0, 1], got {value!r}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size)
        return d


def _reset_parameters(model: nn.Module, seed: int) -> None:
    """A fresh initialisation of `model`: each submodule's reset_parameters(), and a normal
    draw with the current scale for parameters no submodule resets (embeddings)."""
    torch.manual_seed(seed)
    owned = set()
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()
            owned.update(id(p) for p in module.parameters(recurse=False))
    with torch.no_grad():
        for p in model.parameters():
            if id(p) not in owned:
                p.copy_(torch.randn_like(p) * p.std().clamp_min(1e-3))


def pretrained_pool(student: nn.Module, train: torch.Tensor, config: DistillConfig) -> list:
    """Checkpoints (name -> tensor) every `pretrain_every` steps, and at the end, along the
    trajectories of `pretrained_students` students trained on real data from their own fresh
    initialisations; with none, the first such initialisation alone. Never the student's own
    weights: an evaluation that builds its students as the caller built this one (same seed)
    would otherwise score a student starting where every inner loop started."""
    if config.pretrained_students == 0:
        model = copy.deepcopy(student)
        _reset_parameters(model, config.seed * 1000)
        return [_snapshot(model)]
    pool = []
    for i in range(config.pretrained_students):
        model = copy.deepcopy(student)
        _reset_parameters(model, config.seed * 1000 + i)
        pool.append(_snapshot(model))
        for steps in _pretrain_segments(config):
            train_student(model, train, steps=steps, lr=config.pretrain_lr,
                          seed=config.seed * 1000 + i + len(pool))
            pool.append(_snapshot(model))
    return pool


def _pretrain_segments(config: DistillConfig) -> list[int]:
    """Steps between consecutive checkpoints of one pretraining trajectory."""
    whole, rest = divmod(config.pretrain_steps, config.pretrain_every)
    return [config.pretrain_every] * whole + ([rest] if rest else [])


def _snapshot(model: nn.Module) -> dict:
    """A copy of the model's parameters, name -> tensor."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _students(student) -> list[nn.Module]:
    """`student` as a list: one module, or a list or tuple of them (architectures the inner
    loops take turns with)."""
    students = list(student) if isinstance(student, (list, tuple)) else [student]
    if not students:
        raise ValueError("student must be an nn.Module or a non-empty list of them, got an "
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
        raise ValueError("student must expose vocab_size (see farzi_fast.farzi.students)")
    if int(train.max()) >= vocab or int(train.min()) < 0:
        raise ValueError(f"train holds ids in [{int(train.min())}, {int(train.max())}] but the "
                         f"student's vocabulary is {vocab}: they must match")
    return vocab


def teacher_sequences(teacher: nn.Module | None, train: torch.Tensor, config: DistillConfig,
                      generator: torch.Generator, vocab_size: int | None = None,
                      padding_id: int | None = None) -> torch.Tensor:
    """The initial soft sequences: μ real rows drawn from `train`, their last ξ items, each
    position (1 - teacher_share) one-hot on the real item + teacher_share the teacher's
    distribution for that item given the real history before it, and of that mixture
    `uniform_share` replaced by the uniform distribution over the items. Positions before a
    short history are padding (one-hot on the padding id), which the students skip and the
    loss ignores, as for a left-padded real row. `vocab_size` and `padding_id` are the
    teacher's unless given: give them when `teacher` is None (only with teacher_share 0)."""
    mu, xi = config.size
    if xi > train.shape[1] - 1:
        raise ValueError(f"size asks for sequences of {xi} positions but the real rows hold "
                         f"{train.shape[1] - 1} (raise max_len or lower size)")
    rows = train[torch.randperm(len(train), generator=generator)[:mu]]
    if len(rows) < mu:  # fewer real rows than summary sequences: draw with repetition
        rows = train[torch.randint(len(train), (mu,), generator=generator)]
    items = rows[:, -xi:]
    probs = None
    if teacher is not None:
        device = next(teacher.parameters()).device
        was_training = teacher.training
        teacher.eval()
        with torch.no_grad():
            probs = teacher(rows[:, :-1].to(device))[:, -xi:].softmax(-1)
        teacher.train(was_training)
        items, vocab_size = items.to(device), probs.shape[-1]
        if padding_id is None:
            padding_id = getattr(teacher, "padding_id", None)
    elif config.teacher_share > 0:
        raise ValueError(f"teacher_share {config.teacher_share} needs a teacher (pass teacher=)")
    one_hot = nn.functional.one_hot(items, vocab_size).to(
        torch.get_default_dtype() if probs is None else probs.dtype)
    mixed = one_hot
    if probs is not None:
        mixed = (1 - config.teacher_share) * one_hot + config.teacher_share * \
            _without_padding(probs, padding_id)
    if config.uniform_share > 0:
        uniform = _without_padding(torch.full_like(mixed, 1 / vocab_size), padding_id)
        mixed = (1 - config.uniform_share) * mixed + config.uniform_share * uniform
    if padding_id is not None:
        mixed = torch.where((items == padding_id)[..., None], one_hot, mixed)
    return mixed


def _without_padding(probs: torch.Tensor, padding_id: int | None) -> torch.Tensor:
    """`probs` with no mass on the padding id, renormalised (as given if there is none)."""
    if padding_id is None:
        return probs
    probs = probs.clone()
    probs[..., padding_id] = 0.0
    return probs / probs.sum(-1, keepdim=True)


def default_teacher(student: nn.Module, train: torch.Tensor, config: DistillConfig,
                    pool: list) -> nn.Module:
    """The first pretrained student (its last checkpoint in `pool`) trained on real data
    until `teacher_steps`; without pretrained students, a fresh one trained as long."""
    steps = config.pretrain_steps if config.teacher_steps is None else config.teacher_steps
    if steps == 0:
        raise ValueError("init='teacher' needs a teacher: pass teacher=, or give the default "
                         "one training steps (teacher_steps, or pretrain_steps >= 1)")
    teacher = copy.deepcopy(student)
    device = next(teacher.parameters()).device
    # its own random numbers: the same teacher however many pool students trained before it,
    # and the run's stream untouched
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if config.pretrained_students:
            done, last = config.pretrain_steps, pool[len(_pretrain_segments(config))]
            with torch.no_grad():
                for name, p in teacher.named_parameters():
                    p.copy_(last[name])
        else:
            done = 0
            _reset_parameters(teacher, config.seed * 1000)
        if steps > done:
            torch.manual_seed(config.seed * 1000 + 999)
            train_student(teacher, train, steps=steps - done, lr=config.pretrain_lr,
                          seed=config.seed * 1000 + 999)
    return teacher


def initial_summary(student, train, config, pool, teacher, vocab, generator) -> FarziData:
    """The summary the outer loop starts from: random logits, or teacher-labelled real
    sequences (`teacher`, or `default_teacher`; none when teacher_share is 0), drawn with
    `generator`; its padding id is the student's."""
    if config.init == "random":
        summary = FarziData(*config.size, vocab, config.latent_dim, config.temperature,
                            generator=generator)
    else:
        if teacher is None and config.teacher_share > 0:
            teacher = default_teacher(student, train, config, pool)
        probs = teacher_sequences(teacher, train, config, generator, vocab,
                                  getattr(student, "padding_id", None))
        summary = FarziData.from_distributions(probs, config.latent_dim, config.temperature,
                                               generator=generator)
    summary.padding_id = getattr(student, "padding_id", None)
    return summary


def _loop_seed(seed: int, step: int, loop: int) -> int:
    """The random seed of inner loop `loop` of outer step `step` (its dropout masks): the
    same whichever rank runs it."""
    return (seed * 1_000_003 + step) * 1_009 + loop


def _inner_loop(student, farzi, config, init, real, padding_id, step, loop, anchor_every,
                anchor_head):
    """One inner loop from `init` on the summary, scored on `real`: (meta-loss, its gradient
    with respect to the summary's tensors, the largest relative drift of the engine's
    reconstructed states that an anchor corrected: 0 for SGD loops, unrolled by autograd)."""
    def inner_loss(f, t, *meta):
        return soft_loss(f, farzi.soft(*meta), padding_id)

    device = real.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(_loop_seed(config.seed, step, loop))
        try:
            if config.inner_optimizer == "sgd":
                trained = unrolled_sgd(student, inner_loss, config.inner_steps,
                                       meta=farzi.meta, lr=config.inner_lr, init=init)
            else:
                trained = unroll(student, inner_loss, config.inner_steps, meta=farzi.meta,
                                 lr=config.inner_lr, eps=config.inner_eps, init=init,
                                 anchor_every=anchor_every,
                                 anchor_head=anchor_head, compile=config.compile)
        except NonFiniteError as error:
            raise FloatingPointError(f"outer step {step}, inner loop: {error}; the last "
                                     f"checkpoint was left as it was") from None
        meta_loss = hard_loss(lambda x: functional_call(student, dict(trained), (x,)), real,
                              padding_id)
        grads = torch.autograd.grad(meta_loss, farzi.meta)
    report = getattr(trained, "report", None)
    return meta_loss.detach().double(), grads, report.max_anchor_drift if report else 0.0


def distill(student: nn.Module | list, train: torch.Tensor, *, size, inner_steps, outer_steps,
            latent_dim=None, device=None, callback=None, checkpoint=None, checkpoint_every=0,
            resume=False, anchor_every=None, anchor_head=None, teacher=None, validate=None,
            validate_every=0, process_group=None, check_every=10, **options) -> FarziData:
    """Distill `train` (long rows of real sequences; 0 is padding for SASRec-style students)
    into a FarziData of `size` = (μ, ξ): factorised with rank `latent_dim`, or μ × ξ × V
    logits when None. `options` are the other DistillConfig fields.

    `student`: a module, or a list of modules over the same vocabulary (e.g. SASRec and
    GRU4Rec) that the inner loops take turns with, loop after loop, each from its own pool of
    starts: a summary that suits one architecture's training only is not data. The first
    makes the default teacher.

    `teacher`: a model over the same vocabulary whose next-item distributions label the
    initial sequences (default: the first pretrained student). `validate(step, farzi) -> score`
    (higher is better) runs at the start and every `validate_every` outer steps and at the
    end, without touching the run's random numbers; the best-scoring summary is returned.
    `callback(step, meta_loss, farzi_data)` runs after every outer step. With `checkpoint`
    (a path), the full state is written atomically every `checkpoint_every` outer steps and
    at the end; `resume=True` continues from it exactly, and refuses a checkpoint written
    with a different configuration.

    Each outer step averages the meta-gradients of `meta_batch` inner loops (an option, 1 by
    default), each from its own pool start and real batch. Inside a torch.distributed process
    group (`process_group`, or the default one when initialised, e.g. by torchrun) the loops
    are split over the ranks and their meta-gradients all-reduced, so the summary does not
    depend on the number of ranks (up to float summation order): every random draw belongs to
    an (outer step, loop) pair, not to a rank. Only rank 0 validates and writes the
    checkpoint; `callback` runs on every rank. Every `check_every` outer steps the ranks
    compare a checksum of the summary and stop if they drifted apart.
    """
    config = DistillConfig(tuple(size), latent_dim, inner_steps, outer_steps, **options)
    students = _students(student)
    vocab = _check_students(students, train)
    validate_every = require_int("validate_every", validate_every, minimum=0)
    check_every = require_int("check_every", check_every, minimum=0)
    ranks = Ranks.of(process_group)
    if config.meta_batch % ranks.world:
        raise ValueError(f"meta_batch ({config.meta_batch}) must be divisible by the number of "
                         f"processes ({ranks.world}): each runs the same number of inner loops")
    device = torch.device(device) if device is not None else \
        next(students[0].parameters()).device
    students = [s.to(device) for s in students]
    dtype = next(students[0].parameters()).dtype  # the summary follows the students' precision
    padding_id = getattr(students[0], "padding_id", None)

    g = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    identity = _run_identity(students, train)
    # every rank must ask for validation alike (rank 0 runs it, the others receive its score)
    ranks.agree("configuration, data and student", [config.as_dict(), identity,
                                                    validate is not None, validate_every,
                                                    check_every])
    state = (_load_checkpoint(checkpoint, config, identity, vocab)
             if resume and checkpoint is not None else None)
    if state is not None:
        pool = [{n: t.to(device) for n, t in p.items()} for p in state["pool"]]
        farzi = _restore(state["summary"], config, vocab, padding_id).to(device, dtype)
        best = dict(state["best"],
                    summary=_restore(state["best"]["summary"], config, vocab, padding_id))
        g.set_state(state["sampler_rng"])
        torch.set_rng_state(state["torch_rng"])
        start, history = state["step"] + 1, list(state["history"])
        skipped = list(state.get("skipped", []))  # absent from checkpoints before it existed
    else:
        # the students' pools one after another, the first student's first (the teacher's)
        pool = [{n: t.to(device) for n, t in p.items()}
                for s in students for p in pretrained_pool(s, train, config)]
        farzi = initial_summary(students[0], train.to(device), config, pool, teacher, vocab,
                                g).to(device, dtype)
        # rank 0's pool and start for all: pretraining need not be bitwise reproducible
        ranks.broadcast_([t for p in pool for t in p.values()] + [t.data for t in farzi.meta])
        best = {"score": None, "step": 0, "summary": None}
        start, history, skipped = 1, [], []
    per_student = len(pool) // len(students)  # starts in each student's pool
    optimizer = torch.optim.Adam(farzi.meta, lr=config.outer_lr)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])

    def consider(step):
        """Validate the current summary (on rank 0); keep it if it is the best so far."""
        score = None
        if ranks.leader:
            with torch.random.fork_rng(devices=[]):  # the run's randomness stays untouched
                score = float(validate(step, farzi))
        score = ranks.from_leader(score)
        if best["score"] is None or score > best["score"]:
            best.update(score=score, step=step, summary=copy.deepcopy(farzi).cpu())

    if validate is not None and start == 1:
        consider(0)

    for step in range(start, config.outer_steps + 1):
        for group in optimizer.param_groups:  # cosine decay, a function of the step alone
            group["lr"] = config.outer_lr * 0.5 * (1 + math.cos(math.pi * (step - 1) /
                                                                config.outer_steps))
        # Every rank draws every loop's start and real batch, in the same order as one process.
        draws = [(int(torch.randint(per_student, (1,), generator=g)),
                  torch.randint(len(train), (min(config.outer_batch, len(train)),), generator=g))
                 for _ in range(config.meta_batch)]
        grads = [torch.zeros_like(p) for p in farzi.meta]
        total = torch.zeros((), dtype=torch.float64, device=device)
        drift = 0.0  # of this process's loops
        for loop in ranks.share(config.meta_batch):
            start_index, rows = draws[loop]
            turn = ((step - 1) * config.meta_batch + loop) % len(students)
            loss, loop_grads, loop_drift = _inner_loop(
                students[turn], farzi, config, pool[turn * per_student + start_index],
                train[rows].to(device), padding_id, step, loop, anchor_every, anchor_head)
            total += loss
            if math.isnan(loop_drift) or loop_drift > drift:  # NaN (states lost) stays
                drift = loop_drift
            for acc, grad in zip(grads, loop_grads):
                acc += grad
        ranks.sum_([total, *grads])
        value = float(total) / config.meta_batch
        if not math.isfinite(value):
            raise FloatingPointError(f"meta-loss is {value} at outer step {step}; the last "
                                     f"checkpoint was left as it was")
        if not all(bool(grad.isfinite().all()) for grad in grads):
            # A reconstruction off by more than its own size: the trajectory amplifies
            # rounding, and float32 meta-gradients lose every digit there, unrolled
            # autograd's too (benchmarks/NOTES.md, session 13)
            off = ("NaN" if math.isnan(drift) else
                   f"off by up to {drift:.2g} times their size")
            chaotic = (f"; the reverse pass found reconstructed states {off}: the inner loop "
                       f"is chaotic at inner_lr {config.inner_lr} and inner_steps "
                       f"{config.inner_steps}, lower either" if not drift <= 1 else "")
            problem = (f"the meta-gradient at outer step {step} is not finite (the meta-loss, "
                       f"{value:.6g}, is){chaotic}")
            skipped.append(step)
            in_a_row = _ending_run(skipped)
            if in_a_row > config.skip_nonfinite:
                raise FloatingPointError(f"{problem}, {in_a_row} outer steps in a row "
                                         f"(skip_nonfinite={config.skip_nonfinite}); the "
                                         f"summary was not updated and the last checkpoint was "
                                         f"left as it was")
            warnings.warn(f"{problem}: outer step skipped, the summary left as it was "
                          f"({in_a_row} in a row; the run stops after "
                          f"{config.skip_nonfinite})", RuntimeWarning, stacklevel=2)
        else:
            _outer_update(farzi, optimizer, grads, config.meta_batch, step, first=step == start)
        history.append(value)
        if validate is not None and validate_every and (step % validate_every == 0 or
                                                        step == config.outer_steps):
            consider(step)
        if callback is not None:
            with torch.random.fork_rng(devices=[]):
                callback(step, value, farzi)
        if check_every and (step % check_every == 0 or step == config.outer_steps):
            ranks.agree(f"summary after outer step {step} (checksum)", checksum(farzi.meta))
        if ranks.leader and checkpoint is not None and (
                step == config.outer_steps or (checkpoint_every and step % checkpoint_every == 0)):
            atomic_save({"format": CHECKPOINT_FORMAT, "config": config.as_dict(),
                         "identity": identity, "step": step,
                         "summary": _tensors(farzi), "optimizer": optimizer.state_dict(),
                         "best": dict(best, summary=_tensors(best["summary"])),
                         "sampler_rng": g.get_state(), "torch_rng": torch.get_rng_state(),
                         "history": history, "skipped": skipped,
                         "pool": [{n: t.cpu() for n, t in p.items()} for p in pool]},
                        checkpoint)
    if best["summary"] is not None:
        farzi = best["summary"].to(device)
    farzi.selected_step = best["step"] if validate is not None else config.outer_steps
    farzi.skipped_steps = skipped
    return farzi


def _ending_run(steps: list[int]) -> int:
    """How many of the last `steps` (increasing) are consecutive, ending with the last."""
    run = 1
    while run < len(steps) and steps[-run - 1] == steps[-1] - run:
        run += 1
    return run


def _outer_update(farzi: FarziData, optimizer, grads, meta_batch: int, step: int,
                  first: bool) -> None:
    """One outer Adam step along the mean of the loops' meta-gradients; on a run's `first`
    step, a warning if it moved nothing."""
    for p, grad in zip(farzi.meta, grads):
        p.grad = grad / meta_batch
    before = farzi.soft().detach() if first else None
    optimizer.step()
    if first and torch.equal(before, farzi.soft().detach()):
        # e.g. one-hot rows (teacher_share=0): logits at log(eps²), a saturated softmax
        # whose meta-gradient (~1e-14 of the real items') moves nothing a float holds
        warnings.warn(f"outer step {step} moved no soft token of the summary: its softmax "
                      f"is saturated (one-hot rows, as teacher_share=0 makes, have logits "
                      f"at log(eps²) of the float) and the outer loop cannot move it; give "
                      f"the start some soft mass (teacher_share or uniform_share > 0)",
                      RuntimeWarning, stacklevel=3)


def _tensors(farzi: FarziData | None) -> list | None:
    return None if farzi is None else [t.detach().cpu() for t in farzi.meta]


def _restore(tensors: list | None, config: DistillConfig, vocab: int,
             padding_id: int | None) -> FarziData | None:
    if tensors is None:
        return None
    farzi = FarziData(*config.size, vocab, config.latent_dim, config.temperature)
    farzi.padding_id = padding_id
    with torch.no_grad():
        for mine, saved in zip(farzi.meta, tensors):
            mine.copy_(saved)
    return farzi


def _run_identity(students: list, train: torch.Tensor) -> dict:
    """What a checkpoint must have been written for besides the configuration: the same
    real data and the same student architectures (parameter names and shapes; one student's
    as before there could be several, so those checkpoints still resume)."""
    shapes = [{n: list(p.shape) for n, p in s.named_parameters()} for s in students]
    return {"train": content_digest(train.cpu()),
            "student": shapes[0] if len(shapes) == 1 else shapes}


def _load_checkpoint(path, config: DistillConfig, identity: dict, vocab: int):
    """The state saved at `path` (None if there is none), refused unless it was written by
    this configuration on this data and student, and holds values such a run can reach."""
    if not Path(path).exists():
        return None
    state = safe_load(path, "distill checkpoint")
    if state.get("format") != CHECKPOINT_FORMAT or not isinstance(state.get("config"), dict):
        raise ValueError(f"{path} is not a farzi_fast distill checkpoint")
    differences = changed_settings(state["config"], config.as_dict())
    if differences:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in
                           differences.items())
        raise ValueError(f"refusing to resume {path}: it was written with a different "
                         f"configuration ({detail})")
    for key, what in (("train", "real training data"), ("student", "student architecture")):
        saved_identity = state.get("identity")
        if not isinstance(saved_identity, dict) or saved_identity.get(key) != identity[key]:
            raise ValueError(f"refusing to resume {path}: it was written for another {what}")
    parts = {"summary": list, "optimizer": dict, "best": dict, "sampler_rng": torch.Tensor,
             "torch_rng": torch.Tensor, "history": list, "pool": list}
    missing = [k for k, kind in parts.items() if not isinstance(state.get(k), kind)]
    if missing or not isinstance(state["best"].get("summary", []), (list, type(None))):
        raise ValueError(f"{path}: missing or malformed parts {missing or ['best']}; it was "
                         f"not written by this version of distill()")
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step:
        raise ValueError(f"{path}: step must be a positive int, got {step!r}")
    if step > config.outer_steps:
        raise ValueError(f"{path} is at outer step {step}, beyond outer_steps="
                         f"{config.outer_steps}: ask for at least {step}")
    shapes = [list(t.shape) for t in FarziData(*config.size, vocab, config.latent_dim).meta]
    saved = state.get("summary")
    if (not isinstance(saved, list) or [list(getattr(t, "shape", [])) for t in saved] != shapes
            or not all(bool(t.isfinite().all()) for t in saved)):
        raise ValueError(f"{path}: the summary must be finite tensors of shapes {shapes}")
    if not isinstance(state.get("history"), list) or len(state["history"]) != step:
        raise ValueError(f"{path}: the meta-loss history must hold one value per step")
    return state


def changed_settings(saved: dict, now: dict) -> dict:
    """The settings of `now` that differ from `saved`, name -> (saved, now): what forbids
    resuming a run. `outer_steps` may change, so a finished run can be continued further."""
    defaults = DistillConfig((1, 2), None, 1, 1).as_dict()  # settings older runs lacked
    return {k: (saved.get(k, defaults.get(k)), v) for k, v in now.items()
            if saved.get(k, defaults.get(k)) != v and k != "outer_steps"}
