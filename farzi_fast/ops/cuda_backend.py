"""The `cuda` backend: CUDA C++ kernels in farzi_fast._C_cuda (csrc/cuda_kernels.cu), launched
on the current torch stream of the tensors' device."""

from __future__ import annotations

import torch

from .hyper import AdamHyper, SGDHyper

# Upper bound on the reduction's block partial sums (the kernel caps its grid at the number
# of resident blocks, ~1056 on an H100).
_PARTIALS_CAPACITY = 4096


class CudaLaunchers:
    """The five ops over a compiled module of csrc/cuda_kernels.cu: farzi_fast._C_cuda on a
    GPU, or farzi_fast._C_cuda_emu (the same kernels compiled for the host, which the tests
    run on CPU tensors with stream 0 and no device context)."""

    def __init__(self, module, stream, device_context):
        self._module, self._stream, self._device = module, stream, device_context

    def adam_step(self, w, g, m, v, step: int, hyper: AdamHyper) -> None:
        with self._device(w.device):
            self._module().adam_step(w.data_ptr(), g.data_ptr(), m.data_ptr(), v.data_ptr(),
                                     w.numel(), w.dtype == torch.float64, hyper.lr,
                                     hyper.beta1, hyper.beta2, hyper.eps, hyper.weight_decay,
                                     step, self._stream(w))

    def adam_reverse_params(self, w, m, v, w_bar, m_bar, v_bar, hvp, step: int,
                            hyper: AdamHyper) -> torch.Tensor:
        partials = torch.empty(_PARTIALS_CAPACITY, dtype=torch.float64, device=w.device)
        lr_grad = torch.empty((), dtype=torch.float64, device=w.device)
        with self._device(w.device):
            self._module().adam_reverse_params(
                w.data_ptr(), m.data_ptr(), v.data_ptr(), w_bar.data_ptr(), m_bar.data_ptr(),
                v_bar.data_ptr(), 0 if hvp is None else hvp.data_ptr(), w.numel(),
                w.dtype == torch.float64, hyper.lr, hyper.beta1, hyper.beta2, hyper.eps,
                hyper.weight_decay, step, partials.data_ptr(), _PARTIALS_CAPACITY,
                lr_grad.data_ptr(), self._stream(w))
        return lr_grad

    def adam_reverse_moments(self, m, v, g, m_bar, v_bar, g_bar, hyper: AdamHyper) -> None:
        with self._device(m.device):
            self._module().adam_reverse_moments(
                m.data_ptr(), v.data_ptr(), g.data_ptr(), m_bar.data_ptr(), v_bar.data_ptr(),
                g_bar.data_ptr(), m.numel(), m.dtype == torch.float64, hyper.beta1,
                hyper.beta2, self._stream(m))

    def sgd_step(self, w, g, b, step: int, hyper: SGDHyper) -> None:
        with self._device(w.device):
            self._module().sgd_step(w.data_ptr(), g.data_ptr(), _address(b), w.numel(),
                                    w.dtype == torch.float64, hyper.lr, hyper.momentum,
                                    hyper.dampening, hyper.weight_decay, hyper.nesterov, step,
                                    self._stream(w))

    def sgd_reverse(self, w, g, b, w_bar, b_bar, g_bar, hvp, step: int,
                    hyper: SGDHyper) -> tuple[torch.Tensor, torch.Tensor]:
        partials = torch.empty(2 * _PARTIALS_CAPACITY, dtype=torch.float64, device=w.device)
        grads = torch.empty(2, dtype=torch.float64, device=w.device)
        with self._device(w.device):
            self._module().sgd_reverse(
                w.data_ptr(), g.data_ptr(), _address(b), w_bar.data_ptr(), _address(b_bar),
                g_bar.data_ptr(), _address(hvp), w.numel(), w.dtype == torch.float64, hyper.lr,
                hyper.momentum, hyper.dampening, hyper.weight_decay, hyper.nesterov, step,
                partials.data_ptr(), _PARTIALS_CAPACITY, grads.data_ptr(), self._stream(w))
        return grads[0], grads[1]


def _address(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _module():
    from .. import _C_cuda

    return _C_cuda


def _stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


_launchers = CudaLaunchers(_module, _stream, torch.cuda.device)
adam_step = _launchers.adam_step
adam_reverse_params = _launchers.adam_reverse_params
adam_reverse_moments = _launchers.adam_reverse_moments
sgd_step = _launchers.sgd_step
sgd_reverse = _launchers.sgd_reverse
