"""The `cpu` backend: C++ kernels in farzi_fast._C (csrc/cpu_ops.cpp), OpenMP over
torch.get_num_threads() threads."""

from __future__ import annotations

import torch

from .hyper import AdamHyper, SGDHyper


def _module():
    from .. import _C  # loaded lazily: importing farzi_fast never needs a compiled module

    return _C


def _is_double(t: torch.Tensor) -> bool:
    return t.dtype == torch.float64


def adam_step(w, g, m, v, step: int, hyper: AdamHyper) -> None:
    _module().adam_step(w.data_ptr(), g.data_ptr(), m.data_ptr(), v.data_ptr(), w.numel(),
                        _is_double(w), hyper.lr, hyper.beta1, hyper.beta2, hyper.eps,
                        hyper.weight_decay, step, torch.get_num_threads())


def adam_reverse_params(w, m, v, w_bar, m_bar, v_bar, hvp, step: int,
                        hyper: AdamHyper) -> torch.Tensor:
    lr_grad = _module().adam_reverse_params(
        w.data_ptr(), m.data_ptr(), v.data_ptr(), w_bar.data_ptr(), m_bar.data_ptr(),
        v_bar.data_ptr(), 0 if hvp is None else hvp.data_ptr(), w.numel(), _is_double(w),
        hyper.lr, hyper.beta1, hyper.beta2, hyper.eps, hyper.weight_decay, step,
        torch.get_num_threads())
    return torch.tensor(lr_grad, dtype=torch.float64)


def adam_reverse_moments(m, v, g, m_bar, v_bar, g_bar, hyper: AdamHyper) -> None:
    _module().adam_reverse_moments(m.data_ptr(), v.data_ptr(), g.data_ptr(), m_bar.data_ptr(),
                                   v_bar.data_ptr(), g_bar.data_ptr(), m.numel(), _is_double(m),
                                   hyper.beta1, hyper.beta2, torch.get_num_threads())


def _address(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def sgd_step(w, g, b, step: int, hyper: SGDHyper) -> None:
    _module().sgd_step(w.data_ptr(), g.data_ptr(), _address(b), w.numel(), _is_double(w),
                       hyper.lr, hyper.momentum, hyper.dampening, hyper.weight_decay,
                       hyper.nesterov, step, torch.get_num_threads())


def sgd_reverse(w, g, b, w_bar, b_bar, g_bar, hvp, step: int,
                hyper: SGDHyper) -> tuple[torch.Tensor, torch.Tensor]:
    lr_grad, momentum_grad = _module().sgd_reverse(
        w.data_ptr(), g.data_ptr(), _address(b), w_bar.data_ptr(), _address(b_bar),
        g_bar.data_ptr(), _address(hvp), w.numel(), _is_double(w), hyper.lr, hyper.momentum,
        hyper.dampening, hyper.weight_decay, hyper.nesterov, step, torch.get_num_threads())
    return (torch.tensor(lr_grad, dtype=torch.float64),
            torch.tensor(momentum_grad, dtype=torch.float64))
