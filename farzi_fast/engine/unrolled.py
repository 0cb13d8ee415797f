"""The baseline the engine replaces: unrolled autograd through T differentiable optimizer steps
(`create_graph=True`), which keeps every step's state and activations alive. Used by the tests
as the exact reference (in float64) and by the benchmarks as the memory/time baseline."""

from __future__ import annotations

import torch

from ..ops.hyper import AdamHyper, SGDHyper
from .api import MetaGradient, _initial, _inner_optimizer
from .flat import FlatLayout, FunctionalModel
from .inner import DriftReport, per_meta
from .meta import expand


def _safe_sqrt(v: torch.Tensor) -> torch.Tensor:
    # sqrt'(0) is infinite; where v == 0 (gradient zero so far) the update's derivative is 0.
    positive = v > 0
    return torch.where(positive, torch.where(positive, v, torch.ones_like(v)).sqrt(),
                       torch.zeros_like(v))


def unrolled_meta_gradient(model, loss_fn, outer_fn, steps, *, meta=(), lr=1e-3,
                           betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, init=None,
                           optimizer=None) -> MetaGradient:
    """Same contract as :func:`farzi_fast.meta_gradient` (the user's SGD, Adam or AdamW by
    `optimizer=`, its state included), by plain unrolled autograd through torch.optim's
    update rules written as differentiable tensor expressions."""
    layout = FlatLayout.of(model)
    functional = FunctionalModel(model, layout)
    spec = expand(meta, layout)
    meta, loss_fn = spec.tensors, spec.wrap(loss_fn)
    chosen = _inner_optimizer(model, layout, optimizer, lr, betas, eps, weight_decay)
    h = chosen.hyper
    lr_t = (torch.as_tensor(h.lr, dtype=torch.float64) if not isinstance(chosen.lr, torch.Tensor)
            else chosen.lr.detach().double().clone()).requires_grad_()
    momentum_t = torch.as_tensor(getattr(h, "momentum", 0.0),
                                 dtype=torch.float64).requires_grad_()
    lr_w, momentum_w = lr_t.to(layout.dtype), momentum_t.to(layout.dtype)
    with torch.enable_grad():
        w0 = _initial(layout, model, init).detach().requires_grad_()
        w = w0
        state = {name: x.clone() for name, x in chosen.start.items()}
        losses = []
        for t in range(1, steps + 1):
            loss = loss_fn(functional.bind(w), t, *meta)
            losses.append(loss.detach())
            (g,) = torch.autograd.grad(loss, w, create_graph=True)
            step = chosen.steps_taken + t
            lr_step = lr_w[t - 1] if lr_w.dim() else lr_w
            if isinstance(h, SGDHyper):
                w = _sgd_update(w, g, state, step, h, lr_step, momentum_w)
            else:
                w = _adam_update(w, g + chosen.coupled_l2 * w, state, step, h, lr_step)
        value = outer_fn(functional.bind(w))
        wanted = [x for x in meta if x.requires_grad]
        grads = torch.autograd.grad(value, [lr_t, momentum_t, w0, *wanted], allow_unused=True)
    zero = torch.zeros((), dtype=torch.float64)
    lr_grad = grads[0] if grads[0] is not None else zero
    momentum_grad = grads[1] if grads[1] is not None else zero
    w0_grad = grads[2] if grads[2] is not None else torch.zeros_like(w0)
    meta_grads = [torch.zeros_like(x) if x.requires_grad and g is None else g
                  for x, g in zip(meta, per_meta([x.requires_grad for x in meta], grads[3:]))]
    init_grads = {n: t.clone() for n, t in layout.views(w0_grad).items()}
    return MetaGradient(value.detach(), spec.regroup(meta_grads), lr_grad.detach(), init_grads,
                        DriftReport(w0=0.0), torch.stack(losses),
                        momentum_grad.detach() if isinstance(h, SGDHyper) else None)


def _adam_update(w, g, state: dict, step: int, h: AdamHyper, lr):
    """torch.optim.Adam/AdamW's step (state "m", "v"; zeros when absent)."""
    m = state.get("m", torch.zeros_like(w))
    v = state.get("v", torch.zeros_like(w))
    state["m"] = m = h.beta1 * m + (1 - h.beta1) * g
    state["v"] = v = h.beta2 * v + (1 - h.beta2) * (g * g)
    d = _safe_sqrt(v) / (1 - h.beta2 ** step) ** 0.5 + h.eps
    return w * (1 - lr * h.weight_decay) - (lr / (1 - h.beta1 ** step)) * (m / d)


def _sgd_update(w, g, state: dict, step: int, h: SGDHyper, lr, momentum):
    """torch.optim.SGD's step (state "b", the momentum buffer, made at step 1)."""
    g = g + h.weight_decay * w
    if h.has_momentum:
        b = g if step == 1 else momentum * state["b"] + (1 - h.dampening) * g
        state["b"] = b
        g = g + momentum * b if h.nesterov else b
    return w - lr * g
