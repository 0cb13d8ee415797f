"""The engine's per-step computations as torch.compile'd pure functions
(`unroll(..., compile=True)`).

The eager reverse pass recomputes g_t with create_graph=True and later differentiates that
graph again, op by op: torch.compile cannot compile a double backward. Written with torch.func
instead, a step is a pure function of tensors, which Inductor compiles into fused kernels
with no autograd graph at all: the forward step's gradient, and one reverse step that gives
g_t (to reverse m and v), forms g_bar from it by the torch backend's adam_reverse_moments (the
spec the fused kernels follow) and returns both products along g_bar, so g_t is computed
once. Unrolled autograd cannot do this: it needs every step's graph alive at once.

Dynamo caches by code object and guards, not by function identity: a fresh loss_fn closure
of the same code (distill's inner loss, one per inner loop) reuses the compiled code, and
so does a new t when loss_fn does not branch on it. Random ops fall back to the eager ones
(`fallback_random`), so dropout draws the masks the generator state gives, exactly as the
eager engine's forward and reverse passes do.
"""

from __future__ import annotations

import torch

from ..ops import torch_backend

_OPTIONS = {"fallback_random": True}


def _loss(functional, loss_fn, t, meta):
    def loss(w):
        return loss_fn(functional.bind(w), t, *meta).reshape(())

    return loss


def _gradient_and_loss(functional, loss_fn, w, t, meta):
    """(g_t, loss) at w: the forward step's gradient."""
    return torch.func.grad_and_value(_loss(functional, loss_fn, t, meta))(w)


def _reverse_step(functional, loss_fn, w, t, meta, needs, m_bar, v_bar, hyper):
    """At w = w_{t-1}, with (m_bar, v_bar) the adjoints of m_t and v_t: (g_t, then the
    vector-Jacobian products of w -> g_t(w, meta) with g_bar: H g_bar, and
    (dg_t/dmeta[i])^T g_bar for each i where needs[i])."""
    wanted = [i for i, need in enumerate(needs) if need]

    def gradient(w, *wanted_meta):
        full = list(meta)
        for i, x in zip(wanted, wanted_meta):
            full[i] = x
        return torch.func.grad(_loss(functional, loss_fn, t, full))(w)

    g, pull = torch.func.vjp(gradient, w, *(meta[i] for i in wanted))
    g_bar = torch.empty_like(g)
    unused = [torch.zeros_like(g), torch.zeros_like(g)]  # m, v reversed here are dropped
    torch_backend.adam_reverse_moments(*unused, g, m_bar, v_bar, g_bar, hyper)
    return (g, *pull(g_bar))


gradient_and_loss = torch.compile(_gradient_and_loss, options=_OPTIONS)
reverse_step = torch.compile(_reverse_step, options=_OPTIONS)
