"""A distillation's checkpoint: everything needed to continue a run exactly (summary, outer
optimizer, best summary so far, random states, history, pool), written atomically, read
back without executing code, and refused unless it was written by this configuration on
this data and these students."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..files import atomic_save, content_digest, safe_load
from .config import CONFIG_VERSION, DistillConfig
from .summary import FarziData

CHECKPOINT_FORMAT = "farzi_fast.distill-checkpoint"


@dataclass
class RunState:
    """The state of a distillation between two outer steps."""

    step: int                    # outer steps done
    summary: FarziData
    optimizer: dict              # the outer Adam's state_dict
    best: dict                   # score, step, summary (a FarziData or None)
    sampler_rng: torch.Tensor    # the generator of every (outer step, loop) draw
    torch_rng: torch.Tensor
    history: list                # meta-loss per outer step
    skipped: list                # outer steps skipped for a non-finite meta-gradient
    pool: list                   # the inner loops' starts, name -> tensor each


def run_identity(students: list[nn.Module], train: torch.Tensor) -> dict:
    """What a checkpoint must have been written for besides the configuration: the same
    real data and the same student architectures (parameter names and shapes)."""
    return {"train": content_digest(train.cpu()),
            "students": [{n: list(p.shape) for n, p in s.named_parameters()}
                         for s in students]}


def save_checkpoint(path, config: DistillConfig, identity: dict, state: RunState) -> None:
    """Write `state` to `path` atomically."""
    atomic_save({"format": CHECKPOINT_FORMAT, "version": CONFIG_VERSION,
                 "config": config.as_dict(), "identity": identity, "step": state.step,
                 "summary": _tensors(state.summary), "optimizer": state.optimizer,
                 "best": dict(state.best, summary=_tensors(state.best["summary"])),
                 "sampler_rng": state.sampler_rng, "torch_rng": state.torch_rng,
                 "history": state.history, "skipped": state.skipped,
                 "pool": [{n: t.cpu() for n, t in p.items()} for p in state.pool]}, path)


def load_checkpoint(path, config: DistillConfig, identity: dict, vocab: int,
                    padding_id: int | None) -> RunState | None:
    """The state saved at `path` (None if there is none), refused unless it was written by
    this version for this configuration, data and students, and holds values such a run can
    reach."""
    if not Path(path).exists():
        return None
    saved = safe_load(path, "distill checkpoint")
    if saved.get("format") != CHECKPOINT_FORMAT or not isinstance(saved.get("config"), dict):
        raise ValueError(f"{path} is not a farzi_fast distill checkpoint")
    if saved.get("version") != CONFIG_VERSION:
        raise ValueError(f"{path} is a distill checkpoint of format version "
                         f"{saved.get('version', 1)!r}; this farzi_fast reads version "
                         f"{CONFIG_VERSION} only: start the run again")
    differences = changed_settings(saved["config"], config.as_dict())
    if differences:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in
                           differences.items())
        raise ValueError(f"refusing to resume {path}: it was written with a different "
                         f"configuration ({detail})")
    for key, what in (("train", "real training data"), ("students", "student architecture")):
        saved_identity = saved.get("identity")
        if not isinstance(saved_identity, dict) or saved_identity.get(key) != identity[key]:
            raise ValueError(f"refusing to resume {path}: it was written for another {what}")
    parts = {"summary": list, "optimizer": dict, "best": dict, "sampler_rng": torch.Tensor,
             "torch_rng": torch.Tensor, "history": list, "pool": list, "skipped": list}
    missing = [k for k, kind in parts.items() if not isinstance(saved.get(k), kind)]
    if missing or not isinstance(saved["best"].get("summary", []), (list, type(None))):
        raise ValueError(f"{path}: missing or malformed parts {missing or ['best']}")
    step = saved.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step:
        raise ValueError(f"{path}: step must be a positive int, got {step!r}")
    if step > config.outer_steps:
        raise ValueError(f"{path} is at outer step {step}, beyond outer_steps="
                         f"{config.outer_steps}: ask for at least {step}")
    shapes = [list(t.shape) for t in FarziData(*config.size, vocab, config.latent_dim).meta]
    tensors = saved["summary"]
    if ([list(getattr(t, "shape", [])) for t in tensors] != shapes
            or not all(bool(t.isfinite().all()) for t in tensors)):
        raise ValueError(f"{path}: the summary must be finite tensors of shapes {shapes}")
    if len(saved["history"]) != step:
        raise ValueError(f"{path}: the meta-loss history must hold one value per step")
    best_tensors = saved["best"]["summary"]
    best = dict(saved["best"], summary=None if best_tensors is None else
                _restore(best_tensors, config, vocab, padding_id))
    return RunState(step=step, summary=_restore(tensors, config, vocab, padding_id),
                    optimizer=saved["optimizer"], best=best,
                    sampler_rng=saved["sampler_rng"], torch_rng=saved["torch_rng"],
                    history=list(saved["history"]), skipped=list(saved["skipped"]),
                    pool=saved["pool"])


def changed_settings(saved: dict, now: dict) -> dict:
    """The settings of `now` that differ from `saved`, name -> (saved, now): what forbids
    resuming a run. `outer_steps` may change, so a finished run can be continued further."""
    keys = (set(saved) | set(now)) - {"outer_steps"}
    return {k: (saved.get(k), now.get(k)) for k in sorted(keys) if saved.get(k) != now.get(k)}


def _tensors(farzi: FarziData | None) -> list | None:
    return None if farzi is None else [t.detach().cpu() for t in farzi.meta]


def _restore(tensors: list, config: DistillConfig, vocab: int,
             padding_id: int | None) -> FarziData:
    farzi = FarziData(*config.size, vocab, config.latent_dim)
    farzi.padding_id = padding_id
    with torch.no_grad():
        for mine, saved in zip(farzi.meta, tensors):
            mine.copy_(saved)
    return farzi
