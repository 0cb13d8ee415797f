"""`distill()`: optimise a FarziData summary so that students trained on it for a few Adam
steps do well on real data (Sachdeva et al., arXiv 2310.09983).

Each outer step: draw a start point from a pool of pretrained-trajectory checkpoints, train
the student on the soft synthetic sequences for `inner_steps` Adam steps through
`farzi_fast.unroll` (memory independent of inner_steps), score it on a batch of real
sequences, and take one Adam step on (Z, M) with the meta-gradient.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from .._checks import require_int
from ..engine import unroll
from .summary import FarziData, atomic_save, safe_load
from .train import hard_loss, soft_loss, train_student

CHECKPOINT_FORMAT = "farzi_fast.distill-checkpoint"


@dataclass(frozen=True)
class DistillConfig:
    size: tuple[int, int]          # (μ sequences, ξ positions)
    latent_dim: int
    inner_steps: int
    outer_steps: int
    inner_lr: float = 1e-2
    outer_lr: float = 3e-2
    outer_batch: int = 128
    temperature: float = 1.0
    pretrained_students: int = 2
    pretrain_steps: int = 100
    pretrain_every: int = 25       # checkpoint spacing along each pretraining trajectory
    pretrain_lr: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        if (not isinstance(self.size, (tuple, list)) or len(self.size) != 2
                or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.size)):
            raise ValueError(f"size must be (num_sequences, seq_len) of positive ints, got "
                             f"{self.size!r}")
        if self.size[1] < 2:
            raise ValueError(f"seq_len must be >= 2 (next-item targets), got {self.size[1]}")
        for name in ("latent_dim", "inner_steps", "outer_steps", "outer_batch",
                     "pretrain_every"):
            require_int(name, getattr(self, name))
        for name in ("pretrained_students", "pretrain_steps"):
            require_int(name, getattr(self, name), minimum=0)
        for name in ("inner_lr", "outer_lr", "temperature", "pretrain_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")

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
    """Checkpoints (name -> tensor) every `pretrain_every` steps along the trajectories of
    `pretrained_students` students trained on real data; with none, the student's own
    initialisation only."""
    if config.pretrained_students == 0:
        return [_snapshot(student)]
    pool = []
    for i in range(config.pretrained_students):
        model = copy.deepcopy(student)
        _reset_parameters(model, config.seed * 1000 + i)
        pool.append(_snapshot(model))
        for _ in range(config.pretrain_steps // config.pretrain_every):
            train_student(model, train, steps=config.pretrain_every, lr=config.pretrain_lr,
                          seed=config.seed * 1000 + i + len(pool))
            pool.append(_snapshot(model))
    return pool


def _snapshot(model: nn.Module) -> dict:
    """A copy of the model's parameters, name -> tensor."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


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


def distill(student: nn.Module, train: torch.Tensor, *, size, latent_dim, inner_steps,
            outer_steps, device=None, callback=None, checkpoint=None, checkpoint_every=0,
            resume=False, anchor_every=None, anchor_head=None, **options) -> FarziData:
    """Distill `train` (long rows of real sequences; 0 is padding for SASRec-style students)
    into a FarziData of `size` = (μ, ξ). `options` are the other DistillConfig fields.

    `callback(step, meta_loss, farzi_data)` runs after every outer step. With `checkpoint`
    (a path), the full state is written atomically every `checkpoint_every` outer steps and
    at the end; `resume=True` continues from it exactly, and refuses a checkpoint written
    with a different configuration.
    """
    config = DistillConfig(tuple(size), latent_dim, inner_steps, outer_steps, **options)
    vocab = _check_student(student, train)
    device = torch.device(device) if device is not None else next(student.parameters()).device
    student = student.to(device)
    padding_id = getattr(student, "padding_id", None)

    g = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    farzi = FarziData(*config.size, vocab, config.latent_dim, config.temperature,
                      generator=g).to(device)
    optimizer = torch.optim.Adam(farzi.parameters(), lr=config.outer_lr)
    start, history, pool = 1, [], None
    if resume and checkpoint is not None:
        state = _load_checkpoint(checkpoint, config)
        if state is not None:
            with torch.no_grad():
                farzi.latent.copy_(state["latent"])
                farzi.decoder.copy_(state["decoder"])
            optimizer.load_state_dict(state["optimizer"])
            g.set_state(state["sampler_rng"])
            torch.set_rng_state(state["torch_rng"])
            pool = [{n: t.to(device) for n, t in p.items()} for p in state["pool"]]
            start, history = state["step"] + 1, list(state["history"])
    if pool is None:
        pool = [{n: t.to(device) for n, t in p.items()}
                for p in pretrained_pool(student, train, config)]

    def inner_loss(f, t, latent, decoder):
        return soft_loss(f, farzi.soft(latent, decoder))

    for step in range(start, config.outer_steps + 1):
        init = pool[int(torch.randint(len(pool), (1,), generator=g))]
        rows = torch.randint(len(train), (min(config.outer_batch, len(train)),), generator=g)
        real = train[rows].to(device)
        trained = unroll(student, inner_loss, config.inner_steps,
                         meta=(farzi.latent, farzi.decoder), lr=config.inner_lr,
                         init=init, anchor_every=anchor_every, anchor_head=anchor_head)
        meta_loss = hard_loss(lambda x: functional_call(student, dict(trained), (x,)), real,
                              padding_id)
        optimizer.zero_grad(set_to_none=True)
        meta_loss.backward()
        value = meta_loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"meta-loss is {value} at outer step {step}; the last "
                                     f"checkpoint was left as it was")
        optimizer.step()
        history.append(value)
        if callback is not None:
            callback(step, value, farzi)
        if checkpoint is not None and (step == config.outer_steps or
                                       (checkpoint_every and step % checkpoint_every == 0)):
            atomic_save({"format": CHECKPOINT_FORMAT, "config": config.as_dict(), "step": step,
                         "latent": farzi.latent.detach().cpu(),
                         "decoder": farzi.decoder.detach().cpu(),
                         "optimizer": optimizer.state_dict(), "sampler_rng": g.get_state(),
                         "torch_rng": torch.get_rng_state(), "history": history,
                         "pool": [{n: t.cpu() for n, t in p.items()} for p in pool]},
                        checkpoint)
    return farzi


def _load_checkpoint(path, config: DistillConfig):
    if not Path(path).exists():
        return None
    state = safe_load(path, "distill checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a farzi_fast distill checkpoint")
    differences = changed_settings(state["config"], config.as_dict())
    if differences:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in
                           differences.items())
        raise ValueError(f"refusing to resume {path}: it was written with a different "
                         f"configuration ({detail})")
    return state


def changed_settings(saved: dict, now: dict) -> dict:
    """The settings of `now` that differ from `saved`, name -> (saved, now): what forbids
    resuming a run. `outer_steps` may change, so a finished run can be continued further."""
    return {k: (saved.get(k), v) for k, v in now.items()
            if saved.get(k) != v and k != "outer_steps"}
