"""The start of a distillation: the pool of student weights the inner loops start from, the
teacher, and the summary the outer loop starts from (docs/design.md, "The start")."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from ..training.train import train_student
from .config import DistillConfig
from .summary import FarziData

# progress(phase, done, total): how far a phase of the start is
Progress = Callable[[str, int, int], None]


def _reporting(progress: Progress | None, phase: str, done: int, total: int):
    """A train_student callback that reports each step as `done` + step of `total`."""
    if progress is None:
        return None

    def report(step: int, loss: float) -> bool:
        progress(phase, done + step, total)
        return False
    return report


def _reset_parameters(model: nn.Module, seed: int) -> None:
    """A fresh initialisation of `model`: each submodule's reset_parameters(), and a normal
    draw with the current scale for parameters no submodule resets (embeddings)."""
    torch.manual_seed(seed)
    owned: set[int] = set()
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if module is not model and callable(reset):
            reset()
            owned.update(id(p) for p in module.parameters(recurse=False))
    with torch.no_grad():
        for p in model.parameters():
            if id(p) not in owned:
                p.copy_(torch.randn_like(p) * p.std().clamp_min(1e-3))


def pretrained_pool(student: nn.Module, train: torch.Tensor, config: DistillConfig,
                    progress: Progress | None = None) -> list:
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
    total, done = config.pretrained_students * config.pretrain_steps, 0
    for i in range(config.pretrained_students):
        model = copy.deepcopy(student)
        _reset_parameters(model, config.seed * 1000 + i)
        pool.append(_snapshot(model))
        for steps in _pretrain_segments(config):
            train_student(model, train, steps=steps, lr=config.pretrain_lr,
                          seed=config.seed * 1000 + i + len(pool),
                          callback=_reporting(progress, "pretrained students", done, total))
            done += steps
            pool.append(_snapshot(model))
    return pool


def _pretrain_segments(config: DistillConfig) -> list[int]:
    """Steps between consecutive checkpoints of one pretraining trajectory."""
    whole, rest = divmod(config.pretrain_steps, config.pretrain_every)
    return [config.pretrain_every] * whole + ([rest] if rest else [])


def _snapshot(model: nn.Module) -> dict:
    """A copy of the model's parameters, name -> tensor."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


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
    if vocab_size is None:
        raise ValueError("vocab_size is needed without a teacher")
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
                    pool: list, progress: Progress | None = None) -> nn.Module:
    """The first pretrained student (its last checkpoint in `pool`) trained on real data
    until `teacher_steps`; without pretrained students, a fresh one trained as long."""
    steps = config.teacher_training_steps
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
                          seed=config.seed * 1000 + 999,
                          callback=_reporting(progress, "teacher", done, steps))
    return teacher


def initial_summary(student: nn.Module, train: torch.Tensor, config: DistillConfig, pool: list,
                    teacher: nn.Module | None, vocab: int, generator: torch.Generator,
                    progress: Progress | None = None) -> FarziData:
    """The summary the outer loop starts from: random logits, or teacher-labelled real
    sequences (`teacher`, or `default_teacher`; none when teacher_share is 0), drawn with
    `generator`; its padding id is the student's."""
    if config.init == "random":
        summary = FarziData(*config.size, vocab, config.latent_dim, generator=generator)
    else:
        if teacher is None and config.teacher_share > 0:
            teacher = default_teacher(student, train, config, pool, progress)
        probs = teacher_sequences(teacher, train, config, generator, vocab,
                                  getattr(student, "padding_id", None))
        summary = FarziData.from_distributions(probs, config.latent_dim, generator=generator)
    summary.padding_id = getattr(student, "padding_id", None)
    return summary
