"""The baseline the engine replaces: unrolled autograd through T differentiable Adam steps
(`create_graph=True`), which keeps every step's state and activations alive. Used by the tests
as the exact reference (in float64) and by the benchmarks as the memory/time baseline. Also
plain SGD unrolled the same way (`unrolled_sgd`), for ablations against Adam inner loops:
the engine itself reverses Adam only."""

from __future__ import annotations

import torch

from .api import MetaGradient, _check_meta, _initial
from .flat import FlatLayout, FunctionalModel
from .inner import DriftReport, per_meta


def _safe_sqrt(v: torch.Tensor) -> torch.Tensor:
    # sqrt'(0) is infinite; where v == 0 (gradient zero so far) the update's derivative is 0.
    positive = v > 0
    return torch.where(positive, torch.where(positive, v, torch.ones_like(v)).sqrt(),
                       torch.zeros_like(v))


def unrolled_meta_gradient(model, loss_fn, outer_fn, steps, *, meta=(), lr=1e-3,
                           betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                           init=None) -> MetaGradient:
    """Same contract as :func:`farzi_fast.meta_gradient`, by plain unrolled autograd."""
    layout = FlatLayout.of(model)
    functional = FunctionalModel(model, layout)
    meta = _check_meta(meta, layout)
    beta1, beta2 = betas
    lr_t = torch.as_tensor(lr, dtype=torch.float64).detach().requires_grad_()
    lr_w = lr_t.to(layout.dtype)
    with torch.enable_grad():
        w0 = _initial(layout, model, init).detach().requires_grad_()
        w, m, v = w0, torch.zeros_like(w0), torch.zeros_like(w0)
        losses = []
        for t in range(1, steps + 1):
            loss = loss_fn(functional.bind(w), t, *meta)
            losses.append(loss.detach())
            (g,) = torch.autograd.grad(loss, w, create_graph=True)
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * (g * g)
            d = _safe_sqrt(v) / (1 - beta2 ** t) ** 0.5 + eps
            w = w * (1 - lr_w * weight_decay) - (lr_w / (1 - beta1 ** t)) * (m / d)
        value = outer_fn(functional.bind(w))
        wanted = [x for x in meta if x.requires_grad]
        grads = torch.autograd.grad(value, [lr_t, w0, *wanted], allow_unused=True)
    lr_grad = grads[0] if grads[0] is not None else torch.zeros((), dtype=torch.float64)
    w0_grad = grads[1] if grads[1] is not None else torch.zeros_like(w0)
    meta_grads = [torch.zeros_like(x) if x.requires_grad and g is None else g
                  for x, g in zip(meta, per_meta([x.requires_grad for x in meta], grads[2:]))]
    init_grads = {n: t.clone() for n, t in layout.views(w0_grad).items()}
    return MetaGradient(value.detach(), tuple(meta_grads), lr_grad.detach(), init_grads,
                        DriftReport(w0=0.0), torch.stack(losses))


def unrolled_sgd(model, loss_fn, steps, *, meta=(), lr=1e-2, init=None) -> dict:
    """`steps` plain SGD steps (w <- w - lr g) from `init` (default: the model's parameters),
    by unrolled autograd: the trained parameters, name -> tensor, differentiable with respect
    to the meta tensors. Memory grows with `steps` (every step's graph is kept)."""
    layout = FlatLayout.of(model)
    functional = FunctionalModel(model, layout)
    meta = _check_meta(meta, layout)
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    with torch.enable_grad():
        w = _initial(layout, model, init).detach().requires_grad_()
        for t in range(1, steps + 1):
            (g,) = torch.autograd.grad(loss_fn(functional.bind(w), t, *meta), w,
                                       create_graph=True)
            w = w - lr * g
    return layout.views(w)
