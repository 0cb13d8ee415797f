"""Fused optimizer kernels on flat buffers: the forward step and its exact reverse, for
Adam/AdamW and for SGD (momentum, dampening, Nesterov, coupled L2).

Five in-place ops, one contract, four backends (`torch` is the specification; `cpu`, `cuda`,
`triton` are tested against it). See docs/design.md for the math. All ops validate every argument
before writing anything, so a refused call leaves its buffers unchanged.

Bytes moved per parameter (float32; double them for float64):

=========================  ==================================  ======
op                         reads / writes                      bytes
=========================  ==================================  ======
adam_step                  w g m v / w m v                     28
adam_reverse_params        w m v w̄ m̄ v̄ (hvp) / w w̄ m̄ v̄        40 (44)
adam_reverse_moments       m v g m̄ v̄ / m v ḡ                   32
sgd_step (momentum)        w g b / w b                         20
sgd_reverse (momentum)     w g b w̄ b̄ (hvp) / w̄ b̄ ḡ             32 (36)
=========================  ==================================  ======
"""

from __future__ import annotations

import torch

from .dispatch import BACKENDS, available_backends, resolve
from .hyper import AdamHyper, SGDHyper, check_step
from .validation import check_buffers

__all__ = ["BACKENDS", "AdamHyper", "SGDHyper", "adam_reverse_moments", "adam_reverse_params",
           "adam_step", "available_backends", "sgd_reverse", "sgd_step"]


def adam_step(w, g, m, v, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
              backend="auto") -> None:
    """One Adam step in place on flat buffers: m, v, then w.

    PyTorch semantics: ``torch.optim.Adam`` when ``weight_decay == 0``, ``torch.optim.AdamW``
    (decoupled decay, ``w *= 1 - lr * weight_decay``) otherwise. `step` is the 1-based step
    number of the update (bias corrections use it). Moves 28 bytes per float32 parameter:
    reads w, g, m, v; writes w, m, v.
    """
    hyper = AdamHyper.checked(lr, beta1, beta2, eps, weight_decay)
    step = check_step(step)
    ref = check_buffers("adam_step", w=w, g=g, m=m, v=v)
    impl = resolve(backend, ref.device)
    if ref.numel():
        impl.adam_step(w, g, m, v, step, hyper)


def adam_reverse_params(w, m, v, w_bar, m_bar, v_bar, hvp=None, *, step, lr, beta1=0.9,
                        beta2=0.999, eps=1e-8, weight_decay=0.0,
                        backend="auto") -> torch.Tensor:
    """First half of reverse step `step` (before the gradient at w_{t-1} is recomputed).

    Given the state after step t (w = w_t, m = m_t, v = v_t) and the adjoints (w_bar, m_bar,
    v_bar) of that state:

    * if `hvp` (the Hessian-vector product of reverse step t+1 with respect to w) is given,
      completes step t+1 first: ``w_bar += hvp; m_bar *= beta1; v_bar *= beta2``;
    * reconstructs ``w <- w_{t-1} = (w_t + lr m̂/d) / (1 - lr wd)``;
    * ``m_bar += w_bar ∂w_t/∂m_t``, ``v_bar += w_bar ∂w_t/∂v_t``, ``w_bar *= 1 - lr wd``.

    Returns this step's contribution to dF/dlr, ``Σ w_bar ∂w_t/∂lr``, as a float64 0-d tensor
    on the buffers' device (no host synchronisation), reduced in the same pass.
    m and v are read only; the second half, :func:`adam_reverse_moments`, reconstructs them.
    Moves 40 bytes per float32 parameter, 44 with `hvp`.
    """
    hyper = AdamHyper.checked(lr, beta1, beta2, eps, weight_decay, reversible=True)
    step = check_step(step)
    ref = check_buffers("adam_reverse_params", w=w, m=m, v=v, w_bar=w_bar, m_bar=m_bar,
                        v_bar=v_bar, hvp=hvp)
    impl = resolve(backend, ref.device)
    if not ref.numel():
        return torch.zeros((), dtype=torch.float64, device=ref.device)
    return impl.adam_reverse_params(w, m, v, w_bar, m_bar, v_bar, hvp, step, hyper)


def adam_reverse_moments(m, v, g, m_bar, v_bar, g_bar, *, beta1=0.9, beta2=0.999,
                         backend="auto") -> None:
    """Second half of a reverse step, given g = g_t recomputed at w_{t-1}.

    Writes ``g_bar = (1-beta1) m_bar + 2 (1-beta2) g v_bar`` (the vector to take the
    Hessian-vector product with), then reconstructs in place
    ``m <- (m - (1-beta1) g) / beta1`` and ``v <- max((v - (1-beta2) g²) / beta2, 0)``.
    m_bar and v_bar are read only: their decay by beta is deferred to the next
    :func:`adam_reverse_params` call (the one given this step's hvp).
    Moves 32 bytes per float32 parameter.
    """
    hyper = AdamHyper.checked(0.0, beta1, beta2, reversible=True)
    ref = check_buffers("adam_reverse_moments", m=m, v=v, g=g, m_bar=m_bar, v_bar=v_bar,
                        g_bar=g_bar)
    impl = resolve(backend, ref.device)
    if ref.numel():
        impl.adam_reverse_moments(m, v, g, m_bar, v_bar, g_bar, hyper)


def _sgd_buffers(op: str, hyper: SGDHyper, **buffers) -> None:
    """The momentum buffers (b, b_bar) are needed exactly when momentum > 0."""
    for name, t in buffers.items():
        if hyper.has_momentum and t is None:
            raise ValueError(f"{op}: {name} is required when momentum > 0 (the momentum "
                             f"buffer or its adjoint)")
        if not hyper.has_momentum and t is not None:
            raise ValueError(f"{op}: {name} must be None when momentum == 0 (plain SGD keeps "
                             f"no buffer)")


def sgd_step(w, g, b, *, step, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
             nesterov=False, backend="auto") -> None:
    """One torch.optim.SGD step in place on flat buffers: b, then w.

    ``g <- g + weight_decay w`` (coupled L2); with momentum, ``b <- g`` at step 1 and
    ``b <- momentum b + (1 - dampening) g`` after, and the direction is ``g + momentum b``
    (Nesterov) or ``b``; without, ``g``. Then ``w <- w - lr direction``. `b` is the momentum
    buffer (None when momentum == 0); `step` is 1 for the step that creates it. Moves 20 bytes
    per float32 parameter with momentum (reads w, g, b; writes w, b), 12 without.
    """
    hyper = SGDHyper.checked(lr, momentum, dampening, weight_decay, nesterov)
    step = check_step(step)
    _sgd_buffers("sgd_step", hyper, b=b)
    ref = check_buffers("sgd_step", w=w, g=g, b=b)
    impl = resolve(backend, ref.device)
    if ref.numel():
        impl.sgd_step(w, g, b, step, hyper)


def sgd_reverse(w, g, b, w_bar, b_bar, g_bar, hvp=None, *, step, lr, momentum=0.0,
                dampening=0.0, weight_decay=0.0, nesterov=False,
                backend="auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Reverse step `step` of :func:`sgd_step`, given the state before it (w = w_{t-1},
    b = b_{t-1}, unused at step 1) and g = g_t, the raw gradient at w_{t-1}.

    Takes the adjoints of w_t (`w_bar`, plus `hvp`, the Hessian-vector product of reverse step
    t+1, when given) and of b_t (`b_bar`). Writes ``g_bar`` = dF/dg_t (the vector to take this
    step's Hessian-vector product with), ``b_bar`` = dF/db_{t-1} (0 at step 1) and ``w_bar`` =
    dF/dw_{t-1} except that product (the weight decay's term included). w, g and b are read
    only: the engine keeps the states (docs/design.md, "SGD").

    Returns this step's (dF/dlr, dF/dmomentum) terms, float64 0-d tensors on the buffers'
    device, reduced in the same pass. Moves 32 bytes per float32 parameter with momentum,
    36 with `hvp`.
    """
    hyper = SGDHyper.checked(lr, momentum, dampening, weight_decay, nesterov)
    step = check_step(step)
    _sgd_buffers("sgd_reverse", hyper, b=b, b_bar=b_bar)
    ref = check_buffers("sgd_reverse", w=w, g=g, b=b, w_bar=w_bar, b_bar=b_bar, g_bar=g_bar,
                        hvp=hvp)
    impl = resolve(backend, ref.device)
    if not ref.numel():
        zero = torch.zeros((), dtype=torch.float64, device=ref.device)
        return zero, zero.clone()
    return impl.sgd_reverse(w, g, b, w_bar, b_bar, g_bar, hvp, step, hyper)
