"""The `torch` backend: plain tensor ops, any float dtype. This is the specification.

Each function computes its results out of place from the formulas of docs/design.md and copies
them into the caller's buffers at the end. csrc/adam_math.h mirrors these expressions term for
term, so the compiled backends agree with this one at round-off.
"""

from __future__ import annotations

import torch

from .hyper import AdamHyper, SGDHyper, step_coefficients


def adam_step(w, g, m, v, step: int, hyper: AdamHyper) -> None:
    c = step_coefficients(hyper, step)
    m_new = hyper.beta1 * m + (1.0 - hyper.beta1) * g
    v_new = hyper.beta2 * v + (1.0 - hyper.beta2) * (g * g)
    d = v_new.sqrt() / c.bias2_sqrt + hyper.eps
    w_new = w * c.decay - c.step_size * (m_new / d)
    m.copy_(m_new)
    v.copy_(v_new)
    w.copy_(w_new)


def adam_reverse_params(w, m, v, w_bar, m_bar, v_bar, hvp, step: int,
                        hyper: AdamHyper) -> torch.Tensor:
    c = step_coefficients(hyper, step)
    if hvp is not None:
        w_bar_in = w_bar + hvp
        m_bar_in = hyper.beta1 * m_bar
        v_bar_in = hyper.beta2 * v_bar
    else:
        w_bar_in, m_bar_in, v_bar_in = w_bar, m_bar, v_bar
    d = v.sqrt() / c.bias2_sqrt + hyper.eps
    direction = m / d
    w_prev = (w + c.step_size * direction) / c.decay
    m_bar_new = m_bar_in + w_bar_in * (-c.step_size / d)
    v_term = w_bar_in * (c.step_size * m / (d * d * (2.0 * v.sqrt() * c.bias2_sqrt)))
    v_bar_new = v_bar_in + torch.where(v > 0, v_term, torch.zeros_like(v_term))
    lr_grad = (w_bar_in * (-hyper.weight_decay * w_prev - direction * c.inv_bias1)).sum(
        dtype=torch.float64)
    w_bar_new = w_bar_in * c.decay
    w.copy_(w_prev)
    w_bar.copy_(w_bar_new)
    m_bar.copy_(m_bar_new)
    v_bar.copy_(v_bar_new)
    return lr_grad


def adam_reverse_moments(m, v, g, m_bar, v_bar, g_bar, hyper: AdamHyper) -> None:
    g_bar_new = (1.0 - hyper.beta1) * m_bar + 2.0 * (1.0 - hyper.beta2) * (g * v_bar)
    m_prev = (m - (1.0 - hyper.beta1) * g) / hyper.beta1
    v_prev = ((v - (1.0 - hyper.beta2) * (g * g)) / hyper.beta2).clamp_min(0.0)
    g_bar.copy_(g_bar_new)
    m.copy_(m_prev)
    v.copy_(v_prev)


def _sgd_direction(w, g, b, step: int, hyper: SGDHyper):
    """(g + wd w, the buffer after this step or None, the step's direction d: w_t = w - lr d),
    as torch.optim.SGD computes them."""
    g_hat = g + hyper.weight_decay * w
    if not hyper.has_momentum:
        return g_hat, None, g_hat
    b_new = g_hat if step == 1 else hyper.momentum * b + (1.0 - hyper.dampening) * g_hat
    d = g_hat + hyper.momentum * b_new if hyper.nesterov else b_new
    return g_hat, b_new, d


def sgd_step(w, g, b, step: int, hyper: SGDHyper) -> None:
    _, b_new, d = _sgd_direction(w, g, b, step, hyper)
    w_new = w - hyper.lr * d
    if b_new is not None:
        b.copy_(b_new)
    w.copy_(w_new)


def sgd_reverse(w, g, b, w_bar, b_bar, g_bar, hvp, step: int,
                hyper: SGDHyper) -> tuple[torch.Tensor, torch.Tensor]:
    w_bar_in = w_bar + hvp if hvp is not None else w_bar
    _, b_new, d = _sgd_direction(w, g, b, step, hyper)
    d_bar = -hyper.lr * w_bar_in
    lr_grad = -(w_bar_in * d).sum(dtype=torch.float64)
    momentum_grad = torch.zeros((), dtype=torch.float64, device=w.device)
    if hyper.has_momentum:
        b_bar_total = b_bar + (hyper.momentum * d_bar if hyper.nesterov else d_bar)
        g_hat_bar = (d_bar if hyper.nesterov else torch.zeros_like(d_bar)) + (
            b_bar_total if step == 1 else (1.0 - hyper.dampening) * b_bar_total)
        if hyper.nesterov:
            momentum_grad = momentum_grad + (d_bar * b_new).sum(dtype=torch.float64)
        if step > 1:
            momentum_grad = momentum_grad + (b_bar_total * b).sum(dtype=torch.float64)
            b_bar.copy_(hyper.momentum * b_bar_total)
        else:
            b_bar.zero_()
    else:
        g_hat_bar = d_bar
    w_bar.copy_(w_bar_in + hyper.weight_decay * g_hat_bar)
    g_bar.copy_(g_hat_bar)
    return lr_grad, momentum_grad
