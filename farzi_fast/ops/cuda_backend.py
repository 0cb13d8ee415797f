"""The `cuda` backend: CUDA C++ kernels in farzi_fast._C_cuda (csrc/cuda_kernels.cu), launched
on the current torch stream of the tensors' device."""

from __future__ import annotations

import torch

from .hyper import AdamHyper

# Upper bound on the reduction's block partial sums (the kernel caps its grid at the number
# of resident blocks, ~1056 on an H100).
_PARTIALS_CAPACITY = 4096


def _module():
    from .. import _C_cuda

    return _C_cuda


def _stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def adam_step(w, g, m, v, step: int, hyper: AdamHyper) -> None:
    with torch.cuda.device(w.device):
        _module().adam_step(w.data_ptr(), g.data_ptr(), m.data_ptr(), v.data_ptr(), w.numel(),
                            w.dtype == torch.float64, hyper.lr, hyper.beta1, hyper.beta2,
                            hyper.eps, hyper.weight_decay, step, _stream(w))


def adam_reverse_params(w, m, v, w_bar, m_bar, v_bar, hvp, step: int,
                        hyper: AdamHyper) -> torch.Tensor:
    partials = torch.empty(_PARTIALS_CAPACITY, dtype=torch.float64, device=w.device)
    lr_grad = torch.empty((), dtype=torch.float64, device=w.device)
    with torch.cuda.device(w.device):
        _module().adam_reverse_params(
            w.data_ptr(), m.data_ptr(), v.data_ptr(), w_bar.data_ptr(), m_bar.data_ptr(),
            v_bar.data_ptr(), 0 if hvp is None else hvp.data_ptr(), w.numel(),
            w.dtype == torch.float64, hyper.lr, hyper.beta1, hyper.beta2, hyper.eps,
            hyper.weight_decay, step, partials.data_ptr(), _PARTIALS_CAPACITY,
            lr_grad.data_ptr(), _stream(w))
    return lr_grad


def adam_reverse_moments(m, v, g, m_bar, v_bar, g_bar, hyper: AdamHyper) -> None:
    with torch.cuda.device(m.device):
        _module().adam_reverse_moments(m.data_ptr(), v.data_ptr(), g.data_ptr(),
                                       m_bar.data_ptr(), v_bar.data_ptr(), g_bar.data_ptr(),
                                       m.numel(), m.dtype == torch.float64, hyper.beta1,
                                       hyper.beta2, _stream(m))
