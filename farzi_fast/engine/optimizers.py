"""The inner optimizer a codebase already builds, read instead of copied by hand:
`unroll(..., optimizer=opt)` takes the hyperparameters of a `torch.optim.Adam` or `AdamW` over
the model's parameters. What the engine cannot reverse yet is refused by name, before any
work: other optimizers (SGD among them), amsgrad, maximize, Adam's coupled L2, parameter
groups with different hyperparameters, and an optimizer that has taken steps (its moments
would be the start; the engine starts from m = v = 0). The optimizer is never modified."""

from __future__ import annotations

import torch
from torch import nn

# the keyword form's defaults: given together with optimizer=, any other value is a conflict
KEYWORD_DEFAULTS = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}


def hyperparameters(optimizer, model: nn.Module, given: dict) -> dict:
    """lr, betas, eps and weight_decay (decoupled, as the engine's Adam takes it) of
    `optimizer`, an Adam or AdamW over exactly the parameters of `model`.

    Args:
        optimizer: the user's torch.optim.Adam or AdamW instance.
        model: the model it optimizes.
        given: the keyword hyperparameters passed beside it (must be their defaults).

    Returns:
        dict with lr, betas, eps and weight_decay.

    Raises:
        TypeError: not an Adam or AdamW.
        ValueError: an option, state or parameter set the engine cannot reverse, or keyword
            hyperparameters given as well.
    """
    kind = type(optimizer).__name__
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        raise TypeError(f"optimizer={kind} cannot be reversed yet: the engine differentiates "
                        f"torch.optim.Adam and AdamW (give one, or lr=/betas=/eps=/"
                        f"weight_decay=)")
    changed = [k for k, v in given.items() if _differs(v, KEYWORD_DEFAULTS[k])]
    if changed:
        raise ValueError(f"give the hyperparameters by optimizer= or by keyword, not both "
                         f"(got {', '.join(changed)} as well)")
    groups = optimizer.param_groups
    first = groups[0]
    for option in ("amsgrad", "maximize"):
        if any(group.get(option) for group in groups):
            raise ValueError(f"optimizer={kind}({option}=True) cannot be reversed: use "
                             f"{option}=False")
    keys = ("lr", "betas", "eps", "weight_decay")
    if any(_differs(group[k], first[k]) for group in groups[1:] for k in keys):
        raise ValueError(f"optimizer={kind} has parameter groups with different "
                         f"hyperparameters; the engine takes one lr, betas, eps and "
                         f"weight_decay for all parameters")
    decoupled = isinstance(optimizer, torch.optim.AdamW) or first.get("decoupled_weight_decay")
    if first["weight_decay"] and not decoupled:
        raise ValueError(f"optimizer=Adam(weight_decay={first['weight_decay']}) adds coupled L2 "
                         f"to the gradient, which the engine cannot reverse yet: use "
                         f"torch.optim.AdamW (decoupled decay) or weight_decay=0")
    if any(optimizer.state.get(p) for group in groups for p in group["params"]):
        raise ValueError(f"optimizer={kind} has taken steps: the engine starts from m = v = 0 "
                         f"and cannot continue its state yet; build a fresh optimizer")
    covered = {id(p) for group in groups for p in group["params"]}
    params = {id(p) for p in model.parameters()}
    if covered != params:
        raise ValueError(f"optimizer={kind} optimizes {len(covered)} tensors but the model has "
                         f"{len(params)} parameters ({len(covered & params)} shared): it must "
                         f"be built over model.parameters()")
    lr = first["lr"]
    return {"lr": lr.detach().clone() if isinstance(lr, torch.Tensor) else lr,
            "betas": tuple(float(b) for b in first["betas"]), "eps": float(first["eps"]),
            "weight_decay": float(first["weight_decay"])}


def _differs(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return not torch.equal(torch.as_tensor(a, dtype=torch.float64),
                               torch.as_tensor(b, dtype=torch.float64))
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        return tuple(a) != tuple(b)
    return a != b
