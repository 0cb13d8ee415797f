"""The `torch` backend: plain tensor ops, any float dtype. This is the specification.

Each function computes its results out of place from the formulas of docs/design.md and copies
them into the caller's buffers at the end. csrc/adam_math.h mirrors these expressions term for
term, so the compiled backends agree with this one at round-off.
"""

from __future__ import annotations

import torch

from .hyper import AdamHyper, step_coefficients


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
