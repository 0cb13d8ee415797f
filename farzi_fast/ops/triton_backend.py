"""The `triton` backend: one Triton kernel per op over flat buffers (a base pointer plus
offsets, no pointer tables), so the same kernels also run on the CPU under
TRITON_INTERPRET=1.

Scalars travel as float64 (`tl.float64` annotations) and become element-type constants through
`tl.full((), x, dtype)`, like the C++ backends cast their double coefficients; under the
interpreter (which passes raw Python floats and ignores the annotations) the same call builds
the constant straight from the double, so float64 stays exact there too. For float32 the
kernels divide and take square roots with IEEE rounding (`div_rn`, `sqrt_rn`) as torch does;
Triton's default float32 `/` and `sqrt` are approximate on GPUs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .hyper import AdamHyper, SGDHyper, step_coefficients

_BLOCK = 1024
# No contraction of a * b + c into one FMA: the reference rounds the product and the sum
# apart, and so do the CPU and CUDA builds (docs/design.md, "Rounding across backends"). The
# interpreter (numpy, which never contracts) accepts and ignores the option.
_ROUNDING = {"enable_fp_fusion": False}


@triton.jit
def _div(a, b, IEEE_FP32: tl.constexpr):
    if IEEE_FP32:
        result = tl.div_rn(a, b)
    else:
        result = a / b
    return result


@triton.jit
def _sqrt(x, IEEE_FP32: tl.constexpr):
    if IEEE_FP32:
        result = tl.sqrt_rn(x)
    else:
        result = tl.sqrt(x)
    return result


# Each kernel splits into a block body and an entry that runs it on BLOCK elements: without a
# mask when the block lies wholly inside [0, n), so loads and stores stay 16-byte vectors
# whatever n is (a mask over a tail-crossing block would make Triton fall back to scalar
# accesses unless n % 16 == 0), and with one on the last, partial block only.

@triton.jit
def _adam_step_block(w_ptr, g_ptr, m_ptr, v_ptr, offsets, mask, beta1, beta2, one_minus_beta1,
                     one_minus_beta2, eps, step_size, bias2_sqrt, decay,
                     IEEE_FP32: tl.constexpr):
    w = tl.load(w_ptr + offsets, mask=mask)
    g = tl.load(g_ptr + offsets, mask=mask)
    m = tl.load(m_ptr + offsets, mask=mask)
    v = tl.load(v_ptr + offsets, mask=mask)
    dt = w.dtype
    m = tl.full((), beta1, dt) * m + tl.full((), one_minus_beta1, dt) * g
    v = tl.full((), beta2, dt) * v + tl.full((), one_minus_beta2, dt) * (g * g)
    d = _div(_sqrt(v, IEEE_FP32), tl.full((), bias2_sqrt, dt), IEEE_FP32) + tl.full((), eps, dt)
    w = w * tl.full((), decay, dt) - tl.full((), step_size, dt) * _div(m, d, IEEE_FP32)
    tl.store(w_ptr + offsets, w, mask=mask)
    tl.store(m_ptr + offsets, m, mask=mask)
    tl.store(v_ptr + offsets, v, mask=mask)


@triton.jit
def _adam_step_kernel(w_ptr, g_ptr, m_ptr, v_ptr, n,
                      beta1: tl.float64, beta2: tl.float64, one_minus_beta1: tl.float64,
                      one_minus_beta2: tl.float64, eps: tl.float64, step_size: tl.float64,
                      bias2_sqrt: tl.float64, decay: tl.float64,
                      BLOCK: tl.constexpr, IEEE_FP32: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offsets = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        _adam_step_block(w_ptr, g_ptr, m_ptr, v_ptr, offsets, None, beta1, beta2,
                         one_minus_beta1, one_minus_beta2, eps, step_size, bias2_sqrt, decay,
                         IEEE_FP32)
    else:
        _adam_step_block(w_ptr, g_ptr, m_ptr, v_ptr, offsets, offsets < n, beta1, beta2,
                         one_minus_beta1, one_minus_beta2, eps, step_size, bias2_sqrt, decay,
                         IEEE_FP32)


@triton.jit
def _reverse_params_block(w_ptr, m_ptr, v_ptr, w_bar_ptr, m_bar_ptr, v_bar_ptr, hvp_ptr,
                          partials_ptr, offsets, mask, beta1, beta2, eps, step_size,
                          bias2_sqrt, inv_bias1, decay, weight_decay, HAS_HVP: tl.constexpr,
                          IEEE_FP32: tl.constexpr):
    w = tl.load(w_ptr + offsets, mask=mask)
    m = tl.load(m_ptr + offsets, mask=mask)
    v = tl.load(v_ptr + offsets, mask=mask)
    w_bar = tl.load(w_bar_ptr + offsets, mask=mask)
    m_bar = tl.load(m_bar_ptr + offsets, mask=mask)
    v_bar = tl.load(v_bar_ptr + offsets, mask=mask)
    dt = w.dtype
    if HAS_HVP:
        w_bar = w_bar + tl.load(hvp_ptr + offsets, mask=mask)
        m_bar = tl.full((), beta1, dt) * m_bar
        v_bar = tl.full((), beta2, dt) * v_bar
    step = tl.full((), step_size, dt)
    root_v = _sqrt(v, IEEE_FP32)
    d = _div(root_v, tl.full((), bias2_sqrt, dt), IEEE_FP32) + tl.full((), eps, dt)
    direction = _div(m, d, IEEE_FP32)
    w_prev = _div(w + step * direction, tl.full((), decay, dt), IEEE_FP32)
    m_bar = m_bar + w_bar * _div(-step, d, IEEE_FP32)
    v_term = w_bar * _div(step * m, d * d * (2.0 * root_v * tl.full((), bias2_sqrt, dt)), IEEE_FP32)
    v_bar = v_bar + tl.where(v > 0, v_term, 0.0)
    lr_term = w_bar * (-tl.full((), weight_decay, dt) * w_prev
                       - direction * tl.full((), inv_bias1, dt))
    if mask is not None:
        lr_term = tl.where(mask, lr_term, 0.0)
    tl.store(partials_ptr + tl.program_id(0), tl.sum(lr_term.to(tl.float64), axis=0))
    tl.store(w_ptr + offsets, w_prev, mask=mask)
    tl.store(w_bar_ptr + offsets, w_bar * tl.full((), decay, dt), mask=mask)
    tl.store(m_bar_ptr + offsets, m_bar, mask=mask)
    tl.store(v_bar_ptr + offsets, v_bar, mask=mask)


@triton.jit
def _reverse_params_kernel(w_ptr, m_ptr, v_ptr, w_bar_ptr, m_bar_ptr, v_bar_ptr, hvp_ptr,
                           partials_ptr, n,
                           beta1: tl.float64, beta2: tl.float64, eps: tl.float64,
                           step_size: tl.float64, bias2_sqrt: tl.float64,
                           inv_bias1: tl.float64, decay: tl.float64, weight_decay: tl.float64,
                           HAS_HVP: tl.constexpr, BLOCK: tl.constexpr,
                           IEEE_FP32: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offsets = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        _reverse_params_block(w_ptr, m_ptr, v_ptr, w_bar_ptr, m_bar_ptr, v_bar_ptr, hvp_ptr,
                              partials_ptr, offsets, None, beta1, beta2, eps, step_size,
                              bias2_sqrt, inv_bias1, decay, weight_decay, HAS_HVP, IEEE_FP32)
    else:
        _reverse_params_block(w_ptr, m_ptr, v_ptr, w_bar_ptr, m_bar_ptr, v_bar_ptr, hvp_ptr,
                              partials_ptr, offsets, offsets < n, beta1, beta2, eps, step_size,
                              bias2_sqrt, inv_bias1, decay, weight_decay, HAS_HVP, IEEE_FP32)


@triton.jit
def _reverse_moments_block(m_ptr, v_ptr, g_ptr, m_bar_ptr, v_bar_ptr, g_bar_ptr, offsets, mask,
                           beta1, beta2, one_minus_beta1, one_minus_beta2,
                           IEEE_FP32: tl.constexpr):
    m = tl.load(m_ptr + offsets, mask=mask)
    v = tl.load(v_ptr + offsets, mask=mask)
    g = tl.load(g_ptr + offsets, mask=mask)
    m_bar = tl.load(m_bar_ptr + offsets, mask=mask)
    v_bar = tl.load(v_bar_ptr + offsets, mask=mask)
    dt = m.dtype
    omb1 = tl.full((), one_minus_beta1, dt)
    omb2 = tl.full((), one_minus_beta2, dt)
    g_bar = omb1 * m_bar + (2.0 * omb2) * (g * v_bar)
    m_prev = _div(m - omb1 * g, tl.full((), beta1, dt), IEEE_FP32)
    v_prev = _div(v - omb2 * (g * g), tl.full((), beta2, dt), IEEE_FP32)
    tl.store(g_bar_ptr + offsets, g_bar, mask=mask)
    tl.store(m_ptr + offsets, m_prev, mask=mask)
    tl.store(v_ptr + offsets, tl.maximum(v_prev, 0.0), mask=mask)


@triton.jit
def _reverse_moments_kernel(m_ptr, v_ptr, g_ptr, m_bar_ptr, v_bar_ptr, g_bar_ptr, n,
                            beta1: tl.float64, beta2: tl.float64,
                            one_minus_beta1: tl.float64, one_minus_beta2: tl.float64,
                            BLOCK: tl.constexpr, IEEE_FP32: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offsets = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        _reverse_moments_block(m_ptr, v_ptr, g_ptr, m_bar_ptr, v_bar_ptr, g_bar_ptr, offsets,
                               None, beta1, beta2, one_minus_beta1, one_minus_beta2, IEEE_FP32)
    else:
        _reverse_moments_block(m_ptr, v_ptr, g_ptr, m_bar_ptr, v_bar_ptr, g_bar_ptr, offsets,
                               offsets < n, beta1, beta2, one_minus_beta1, one_minus_beta2,
                               IEEE_FP32)


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, _BLOCK),)


def adam_step(w, g, m, v, step: int, hyper: AdamHyper) -> None:
    c = step_coefficients(hyper, step)
    _adam_step_kernel[_grid(w.numel())](
        w, g, m, v, w.numel(), hyper.beta1, hyper.beta2, 1.0 - hyper.beta1, 1.0 - hyper.beta2,
        hyper.eps, c.step_size, c.bias2_sqrt, c.decay,
        BLOCK=_BLOCK, IEEE_FP32=w.dtype == torch.float32, **_ROUNDING)


def adam_reverse_params(w, m, v, w_bar, m_bar, v_bar, hvp, step: int,
                        hyper: AdamHyper) -> torch.Tensor:
    c = step_coefficients(hyper, step)
    grid = _grid(w.numel())
    partials = torch.empty(grid[0], dtype=torch.float64, device=w.device)
    _reverse_params_kernel[grid](
        w, m, v, w_bar, m_bar, v_bar, w if hvp is None else hvp, partials, w.numel(),
        hyper.beta1, hyper.beta2, hyper.eps, c.step_size, c.bias2_sqrt, c.inv_bias1, c.decay,
        hyper.weight_decay, HAS_HVP=hvp is not None, BLOCK=_BLOCK,
        IEEE_FP32=w.dtype == torch.float32, **_ROUNDING)
    return partials.sum()


def adam_reverse_moments(m, v, g, m_bar, v_bar, g_bar, hyper: AdamHyper) -> None:
    _reverse_moments_kernel[_grid(m.numel())](
        m, v, g, m_bar, v_bar, g_bar, m.numel(), hyper.beta1, hyper.beta2,
        1.0 - hyper.beta1, 1.0 - hyper.beta2, BLOCK=_BLOCK, IEEE_FP32=m.dtype == torch.float32,
        **_ROUNDING)


# SGD: the momentum buffer's presence, Nesterov and torch's first momentum step are
# compile-time branches; without momentum the buffer pointers are never read (any pointer
# serves).

@triton.jit
def _sgd_direction(w, g, b, lr, momentum, one_minus_dampening, weight_decay,
                   HAS_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, FIRST: tl.constexpr):
    """(d, b_t): the direction of w_t = w - lr d and the buffer after the step."""
    dt = w.dtype
    g_hat = g + tl.full((), weight_decay, dt) * w
    if HAS_MOMENTUM:
        mu = tl.full((), momentum, dt)
        if FIRST:
            b_new = g_hat
        else:
            b_new = mu * b + tl.full((), one_minus_dampening, dt) * g_hat
        if NESTEROV:
            d = g_hat + mu * b_new
        else:
            d = b_new
    else:
        b_new = g_hat
        d = g_hat
    return d, b_new


@triton.jit
def _sgd_step_block(w_ptr, g_ptr, b_ptr, offsets, mask, lr, momentum, one_minus_dampening,
                    weight_decay, HAS_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr,
                    FIRST: tl.constexpr):
    w = tl.load(w_ptr + offsets, mask=mask)
    g = tl.load(g_ptr + offsets, mask=mask)
    if HAS_MOMENTUM and not FIRST:
        b = tl.load(b_ptr + offsets, mask=mask)
    else:
        b = g
    d, b_new = _sgd_direction(w, g, b, lr, momentum, one_minus_dampening, weight_decay,
                              HAS_MOMENTUM, NESTEROV, FIRST)
    tl.store(w_ptr + offsets, w - tl.full((), lr, w.dtype) * d, mask=mask)
    if HAS_MOMENTUM:
        tl.store(b_ptr + offsets, b_new, mask=mask)


@triton.jit
def _sgd_step_kernel(w_ptr, g_ptr, b_ptr, n, lr: tl.float64, momentum: tl.float64,
                     one_minus_dampening: tl.float64, weight_decay: tl.float64,
                     HAS_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, FIRST: tl.constexpr,
                     BLOCK: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offsets = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        _sgd_step_block(w_ptr, g_ptr, b_ptr, offsets, None, lr, momentum, one_minus_dampening,
                        weight_decay, HAS_MOMENTUM, NESTEROV, FIRST)
    else:
        _sgd_step_block(w_ptr, g_ptr, b_ptr, offsets, offsets < n, lr, momentum,
                        one_minus_dampening, weight_decay, HAS_MOMENTUM, NESTEROV, FIRST)


@triton.jit
def _sgd_reverse_block(w_ptr, g_ptr, b_ptr, w_bar_ptr, b_bar_ptr, g_bar_ptr, hvp_ptr,
                       lr_partials_ptr, momentum_partials_ptr, offsets, mask, lr, momentum,
                       one_minus_dampening, weight_decay, HAS_HVP: tl.constexpr,
                       HAS_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr,
                       FIRST: tl.constexpr):
    w = tl.load(w_ptr + offsets, mask=mask)
    g = tl.load(g_ptr + offsets, mask=mask)
    w_bar = tl.load(w_bar_ptr + offsets, mask=mask)
    dt = w.dtype
    if HAS_HVP:
        w_bar = w_bar + tl.load(hvp_ptr + offsets, mask=mask)
    if HAS_MOMENTUM and not FIRST:
        b = tl.load(b_ptr + offsets, mask=mask)
    else:
        b = g
    d, b_new = _sgd_direction(w, g, b, lr, momentum, one_minus_dampening, weight_decay,
                              HAS_MOMENTUM, NESTEROV, FIRST)
    d_bar = -tl.full((), lr, dt) * w_bar
    lr_term = (-(w_bar * d)).to(tl.float64)
    momentum_term = tl.zeros_like(lr_term)
    if HAS_MOMENTUM:
        mu = tl.full((), momentum, dt)
        b_bar = tl.load(b_bar_ptr + offsets, mask=mask)
        if NESTEROV:
            b_bar_total = b_bar + mu * d_bar
            momentum_term = (d_bar * b_new).to(tl.float64)
        else:
            b_bar_total = b_bar + d_bar
        if FIRST:
            g_hat_bar = b_bar_total
            tl.store(b_bar_ptr + offsets, tl.zeros_like(b_bar), mask=mask)
        else:
            g_hat_bar = tl.full((), one_minus_dampening, dt) * b_bar_total
            momentum_term = momentum_term + (b_bar_total * b).to(tl.float64)
            tl.store(b_bar_ptr + offsets, mu * b_bar_total, mask=mask)
        if NESTEROV:
            g_hat_bar = d_bar + g_hat_bar
    else:
        g_hat_bar = d_bar
    if mask is not None:
        lr_term = tl.where(mask, lr_term, 0.0)
        momentum_term = tl.where(mask, momentum_term, 0.0)
    tl.store(lr_partials_ptr + tl.program_id(0), tl.sum(lr_term, axis=0))
    tl.store(momentum_partials_ptr + tl.program_id(0), tl.sum(momentum_term, axis=0))
    tl.store(w_bar_ptr + offsets, w_bar + tl.full((), weight_decay, dt) * g_hat_bar, mask=mask)
    tl.store(g_bar_ptr + offsets, g_hat_bar, mask=mask)


@triton.jit
def _sgd_reverse_kernel(w_ptr, g_ptr, b_ptr, w_bar_ptr, b_bar_ptr, g_bar_ptr, hvp_ptr,
                        lr_partials_ptr, momentum_partials_ptr, n, lr: tl.float64,
                        momentum: tl.float64, one_minus_dampening: tl.float64,
                        weight_decay: tl.float64, HAS_HVP: tl.constexpr,
                        HAS_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, FIRST: tl.constexpr,
                        BLOCK: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offsets = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        _sgd_reverse_block(w_ptr, g_ptr, b_ptr, w_bar_ptr, b_bar_ptr, g_bar_ptr, hvp_ptr,
                           lr_partials_ptr, momentum_partials_ptr, offsets, None, lr, momentum,
                           one_minus_dampening, weight_decay, HAS_HVP, HAS_MOMENTUM, NESTEROV,
                           FIRST)
    else:
        _sgd_reverse_block(w_ptr, g_ptr, b_ptr, w_bar_ptr, b_bar_ptr, g_bar_ptr, hvp_ptr,
                           lr_partials_ptr, momentum_partials_ptr, offsets, offsets < n, lr,
                           momentum, one_minus_dampening, weight_decay, HAS_HVP, HAS_MOMENTUM,
                           NESTEROV, FIRST)


def _sgd_flags(step: int, hyper: SGDHyper) -> dict:
    return dict(HAS_MOMENTUM=hyper.has_momentum, NESTEROV=hyper.nesterov, FIRST=step == 1)


def sgd_step(w, g, b, step: int, hyper: SGDHyper) -> None:
    _sgd_step_kernel[_grid(w.numel())](
        w, g, w if b is None else b, w.numel(), hyper.lr, hyper.momentum,
        1.0 - hyper.dampening, hyper.weight_decay, **_sgd_flags(step, hyper), BLOCK=_BLOCK,
        **_ROUNDING)


def sgd_reverse(w, g, b, w_bar, b_bar, g_bar, hvp, step: int,
                hyper: SGDHyper) -> tuple[torch.Tensor, torch.Tensor]:
    grid = _grid(w.numel())
    partials = torch.empty(2, grid[0], dtype=torch.float64, device=w.device)
    _sgd_reverse_kernel[grid](
        w, g, w if b is None else b, w_bar, w_bar if b_bar is None else b_bar, g_bar,
        w if hvp is None else hvp, partials[0], partials[1], w.numel(), hyper.lr,
        hyper.momentum, 1.0 - hyper.dampening, hyper.weight_decay, HAS_HVP=hvp is not None,
        **_sgd_flags(step, hyper), BLOCK=_BLOCK, **_ROUNDING)
    return partials[0].sum(), partials[1].sum()
