"""The inner optimizer a codebase already builds, read instead of copied by hand:
`unroll(..., optimizer=opt)` takes the hyperparameters, and the state if it has taken steps,
of a `torch.optim.SGD`, `Adam` or `AdamW` over the model's parameters. What the engine cannot
reverse is refused by name, before any work: other optimizers, amsgrad, maximize, parameter
groups with different hyperparameters. The optimizer is never modified."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..ops.hyper import AdamHyper, SGDHyper
from .flat import FlatLayout

# the keyword form's defaults: given together with optimizer=, any other value is a conflict
KEYWORD_DEFAULTS = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
_SGD_KEYS = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
_ADAM_KEYS = ("lr", "betas", "eps", "weight_decay")


@dataclass
class InnerOptimizer:
    """What the engine runs: the hyperparameters (`hyper.lr` is the lr's value), the lr as
    given (a tensor when dF/dlr is wanted), Adam's coupled L2 (torch.optim.Adam's
    weight_decay, added to the gradient; AdamW's decoupled decay is in `hyper`), and the
    starting state: the number of steps already taken and the state buffers, flat in layout
    order ("m", "v" for Adam, "b" for SGD's momentum buffer); empty for a fresh start."""

    hyper: AdamHyper | SGDHyper
    lr: float | torch.Tensor
    coupled_l2: float = 0.0
    steps_taken: int = 0
    start: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def is_sgd(self) -> bool:
        return isinstance(self.hyper, SGDHyper)


def from_keywords(lr, betas, eps, weight_decay) -> InnerOptimizer:
    """The keyword form: Adam, or AdamW when weight_decay > 0."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    hyper = AdamHyper.checked(_lr_value(lr), betas[0], betas[1], eps, weight_decay,
                              reversible=True)
    return InnerOptimizer(hyper, lr)


def from_optimizer(optimizer, model: nn.Module, layout: FlatLayout,
                   given: dict) -> InnerOptimizer:
    """The inner optimizer `optimizer` describes: an SGD, Adam or AdamW over exactly the
    trained parameters of `model`, fresh or after steps.

    Args:
        optimizer: the user's torch.optim.SGD, Adam or AdamW instance (not modified).
        model: the model it optimizes.
        layout: the model's flat layout (the order of the starting state).
        given: the keyword hyperparameters passed beside it: each must be its default,
            except `lr` as a tensor, which replaces the optimizer's lr (to learn it).

    Returns:
        InnerOptimizer.

    Raises:
        TypeError: not an SGD, Adam or AdamW.
        ValueError: an option, state or parameter set the engine cannot reverse, or keyword
            hyperparameters given as well.
    """
    kind = type(optimizer).__name__
    if not isinstance(optimizer, (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)):
        raise TypeError(f"optimizer={kind} cannot be reversed: the engine differentiates "
                        f"torch.optim.SGD, Adam and AdamW (give one of them)")
    learned_lr = given.get("lr") if isinstance(given.get("lr"), torch.Tensor) else None
    changed = [k for k, v in given.items()
               if _differs(v, KEYWORD_DEFAULTS[k]) and not (k == "lr" and learned_lr is not None)]
    if changed:
        raise ValueError(f"give the hyperparameters by optimizer= or by keyword, not both "
                         f"(got {', '.join(changed)} as well; only lr= may be given beside "
                         f"it, as a tensor to learn)")
    groups = optimizer.param_groups
    first = groups[0]
    for option in ("amsgrad", "maximize", "differentiable"):
        if any(group.get(option) for group in groups):
            raise ValueError(f"optimizer={kind}({option}=True) cannot be reversed: use "
                             f"{option}=False")
    sgd = isinstance(optimizer, torch.optim.SGD)
    keys = _SGD_KEYS if sgd else _ADAM_KEYS
    if any(_differs(group[k], first[k]) for group in groups[1:] for k in keys):
        raise ValueError(f"optimizer={kind} has parameter groups with different "
                         f"hyperparameters; the engine takes one set for all parameters")
    names = _names_in_layout(optimizer, model, layout, kind)
    lr = learned_lr if learned_lr is not None else _plain(first["lr"])
    inner: InnerOptimizer
    if sgd:
        inner = InnerOptimizer(SGDHyper.checked(_lr_value(lr), first["momentum"],
                                                first["dampening"], first["weight_decay"],
                                                bool(first["nesterov"])), lr)
    else:
        decoupled = (isinstance(optimizer, torch.optim.AdamW)
                     or bool(first.get("decoupled_weight_decay")))
        decay = float(first["weight_decay"])
        beta1, beta2 = first["betas"]
        inner = InnerOptimizer(AdamHyper.checked(_lr_value(lr), beta1, beta2, first["eps"],
                                                 decay if decoupled else 0.0, reversible=True),
                               lr, coupled_l2=0.0 if decoupled else decay)
    _read_state(optimizer, names, layout, inner, kind)
    return inner


def _names_in_layout(optimizer, model: nn.Module, layout: FlatLayout, kind: str) -> dict:
    """id(parameter) -> its name, after checking the optimizer covers exactly the trained
    parameters."""
    by_id = {id(p): n for n, p in model.named_parameters() if n in layout.names}
    covered = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if covered != set(by_id):
        raise ValueError(f"optimizer={kind} optimizes {len(covered)} tensors but the model has "
                         f"{len(by_id)} trained parameters ({len(covered & set(by_id))} "
                         f"shared): it must be built over model.parameters()")
    return by_id


def _read_state(optimizer, names: dict, layout: FlatLayout, inner: InnerOptimizer,
                kind: str) -> None:
    """Copy the optimizer's state, if it has one, into `inner` as flat starting buffers."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    states = {names[id(p)]: optimizer.state.get(p) or {} for p in params}
    if not any(states.values()):
        return
    if isinstance(inner.hyper, SGDHyper):
        if not inner.hyper.has_momentum:
            return  # plain SGD's state holds nothing the next step reads
        wanted = {"b": "momentum_buffer"}
    else:
        wanted = {"m": "exp_avg", "v": "exp_avg_sq"}
    missing = [n for n, s in states.items() if any(s.get(k) is None for k in wanted.values())]
    if missing:
        raise ValueError(f"optimizer={kind} has state for some parameters but not for "
                         f"{missing[:3]}: the engine continues one state for all parameters; "
                         f"take a step that gives every parameter a gradient, or build a "
                         f"fresh optimizer")
    if not inner.is_sgd:
        counts = {float(s["step"]) for s in states.values()}
        if len(counts) != 1:
            raise ValueError(f"optimizer={kind}'s parameters have taken different numbers of "
                             f"steps ({sorted(counts)}): the engine continues one step count")
        inner.steps_taken = int(counts.pop())
    else:
        inner.steps_taken = 1  # a buffer exists: the next step is not torch's first
    inner.start = {key: layout.flatten({n: s[name].detach() for n, s in states.items()},
                                       f"optimizer state {name}").detach().clone()
                   for key, name in wanted.items()}


def per_step_hypers(inner: InnerOptimizer, steps: int) -> tuple:
    """One validated hyperparameter set per step when the lr is a tensor of `steps` values (a
    learned lr per step), else ()."""
    lr = inner.lr
    if not isinstance(lr, torch.Tensor) or lr.dim() == 0:
        return ()
    if len(lr) != steps:
        raise ValueError(f"lr has {len(lr)} values, one per step, but steps={steps}")
    h = inner.hyper
    if isinstance(h, SGDHyper):
        return tuple(SGDHyper.checked(v, h.momentum, h.dampening, h.weight_decay, h.nesterov)
                     for v in lr.detach().tolist())
    return tuple(AdamHyper.checked(v, h.beta1, h.beta2, h.eps, h.weight_decay, reversible=True)
                 for v in lr.detach().tolist())


def _lr_value(lr) -> float:
    """The lr's value (the first step's, for one lr per step; per_step_hypers checks them)."""
    if isinstance(lr, torch.Tensor):
        if lr.dim() > 1 or lr.numel() == 0 or not lr.is_floating_point():
            raise ValueError(f"lr must be a float, a floating-point scalar tensor or a 1-d "
                             f"tensor of one lr per step, got a {lr.dtype} tensor of shape "
                             f"{tuple(lr.shape)}")
        return lr.detach().reshape(-1)[0].item()
    return lr


def _plain(value):
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def _differs(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return not torch.equal(torch.as_tensor(a, dtype=torch.float64),
                               torch.as_tensor(b, dtype=torch.float64))
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        return tuple(a) != tuple(b)
    return a != b
