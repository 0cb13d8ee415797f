"""Adam hyperparameters and the per-step coefficients derived from them.

Every backend derives its coefficients exactly like this (in double precision, then cast to
the element type), which is half of what makes backends agree with the reference.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


@dataclass(frozen=True)
class AdamHyper:
    """Validated Adam/AdamW hyperparameters (decoupled weight decay, PyTorch conventions)."""

    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0

    @classmethod
    def checked(cls, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                *, reversible=False) -> AdamHyper:
        """Build from user values; raise TypeError/ValueError naming the bad argument.

        `reversible` adds what the reverse step divides by: beta1, beta2 > 0 and
        lr * weight_decay < 1.
        """
        hyper = cls(_real("lr", lr), _real("beta1", beta1), _real("beta2", beta2),
                    _real("eps", eps), _real("weight_decay", weight_decay))
        if hyper.lr < 0:
            raise ValueError(f"lr must be >= 0, got {hyper.lr}")
        lower = "(0, 1)" if reversible else "[0, 1)"
        for name in ("beta1", "beta2"):
            beta = getattr(hyper, name)
            if not (0.0 <= beta < 1.0) or (reversible and beta == 0.0):
                raise ValueError(f"{name} must lie in {lower}, got {beta}"
                                 + (" (the reverse step divides by it)" if reversible else ""))
        if hyper.eps < 0:
            raise ValueError(f"eps must be >= 0, got {hyper.eps}")
        if hyper.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {hyper.weight_decay}")
        if reversible and hyper.lr * hyper.weight_decay >= 1.0:
            raise ValueError(
                f"lr * weight_decay must be < 1 for the reverse step (it divides by "
                f"1 - lr * weight_decay), got {hyper.lr} * {hyper.weight_decay}")
        return hyper


def check_step(step) -> int:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise TypeError(f"step must be an int >= 1 (the 1-based Adam step), got "
                        f"{type(step).__name__}")
    if step < 1:
        raise ValueError(f"step must be >= 1 (the 1-based Adam step), got {step}")
    return int(step)


@dataclass(frozen=True)
class StepCoefficients:
    step_size: float   # lr / (1 - beta1^t)
    bias2_sqrt: float  # sqrt(1 - beta2^t)
    inv_bias1: float   # 1 / (1 - beta1^t)
    decay: float       # 1 - lr * weight_decay


def step_coefficients(hyper: AdamHyper, step: int) -> StepCoefficients:
    bias1 = 1.0 - hyper.beta1 ** step
    bias2 = 1.0 - hyper.beta2 ** step
    return StepCoefficients(step_size=hyper.lr / bias1, bias2_sqrt=math.sqrt(bias2),
                            inv_bias1=1.0 / bias1, decay=1.0 - hyper.lr * hyper.weight_decay)


@dataclass(frozen=True)
class SGDHyper:
    """Validated torch.optim.SGD hyperparameters: coupled L2 (`weight_decay` added to the
    gradient), momentum with dampening, heavy-ball or Nesterov. momentum == 0 is plain SGD,
    which keeps no buffer (dampening and nesterov then change nothing, as in torch)."""

    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False

    @classmethod
    def checked(cls, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
                nesterov=False) -> SGDHyper:
        """Build from user values; raise TypeError/ValueError naming the bad argument."""
        if not isinstance(nesterov, bool):
            raise TypeError(f"nesterov must be True or False, got {nesterov!r}")
        hyper = cls(_real("lr", lr), _real("momentum", momentum), _real("dampening", dampening),
                    _real("weight_decay", weight_decay), nesterov)
        if hyper.lr < 0:
            raise ValueError(f"lr must be >= 0, got {hyper.lr}")
        if hyper.momentum < 0:
            raise ValueError(f"momentum must be >= 0, got {hyper.momentum}")
        if hyper.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {hyper.weight_decay}")
        if nesterov and (hyper.momentum <= 0 or hyper.dampening != 0):
            raise ValueError(f"nesterov=True needs momentum > 0 and dampening = 0 (as "
                             f"torch.optim.SGD), got momentum={hyper.momentum}, "
                             f"dampening={hyper.dampening}")
        return hyper

    @property
    def has_momentum(self) -> bool:
        return self.momentum != 0.0
