"""The inner loop of torch.optim.SGD (plain, heavy-ball or Nesterov momentum, dampening,
coupled L2) forward, and its reverse pass, exact at any T.

SGD's step cannot be undone from its result the way Adam's can: w_t = w_{t-1} - lr d_t with d_t
built from the gradient at w_{t-1} itself (plain SGD, Nesterov), so w_{t-1} is the solution of
an implicit equation. The reverse pass therefore recomputes instead of reversing: the forward
keeps the exact state (w, b) after every `anchor_every`-th step; the reverse pass takes the
segments between them last first, replays each forward from its anchor keeping its states
(at most `anchor_every` of them), and walks it backwards with the fused kernel ops.sgd_reverse
and one Hessian-vector product per step. Every state is the one the forward computed, bit for
bit, so there is no drift to report; the price is one more gradient per step than Adam's
reverse pass (docs/design.md, "SGD").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops.hyper import SGDHyper
from . import rng
from .inner import (
    DriftReport,
    InnerProblem,
    ReverseResult,
    first_non_finite,
    forward_gradient,
    graph_gradient,
    per_meta,
    starting_buffer,
)


@dataclass
class SGDForwardState:
    w0: torch.Tensor
    w: torch.Tensor
    b: torch.Tensor | None  # the momentum buffer (None for plain SGD)
    anchors: dict[int, tuple[torch.Tensor, torch.Tensor | None]]  # step -> exact (w, b)
    rng_states: list
    inner_losses: torch.Tensor


def _has_momentum(problem: InnerProblem) -> bool:
    return isinstance(problem.hyper, SGDHyper) and problem.hyper.has_momentum


def _buffer(problem: InnerProblem, w: torch.Tensor) -> torch.Tensor | None:
    return starting_buffer(problem, "b", w) if _has_momentum(problem) else None


def _clone(b: torch.Tensor | None) -> torch.Tensor | None:
    return None if b is None else b.clone()


def run_forward(problem: InnerProblem, w0: torch.Tensor, meta) -> SGDForwardState:
    """T SGD steps from w0 and the optimizer's momentum buffer (none after a fresh start)."""
    device = problem.layout.device
    w = w0.detach().clone()
    b = _buffer(problem, w)
    meta = [x.detach() for x in meta]
    anchors = {0: (w.clone(), _clone(b))}
    rng_states = []
    losses = torch.empty(problem.steps, dtype=w.dtype, device=device)
    finite_grads = torch.empty(problem.steps, dtype=torch.bool, device=device)
    for t in range(1, problem.steps + 1):
        rng_states.append(rng.capture(device))
        g, loss = forward_gradient(problem, w, t, meta)
        losses[t - 1] = loss.detach()
        finite_grads[t - 1] = g.isfinite().all()
        problem.kernels.sgd_step(w, g.contiguous(), b, problem.optimizer_step(t), problem.hyper)
        if t < problem.steps and t % problem.anchor_every == 0:
            anchors[t] = (w.clone(), _clone(b))
    first_non_finite(losses, finite_grads)
    return SGDForwardState(w0.detach(), w, b, anchors, rng_states, losses)


def _replay(problem: InnerProblem, state: SGDForwardState, meta, start: int, end: int) -> list:
    """The exact states (w_{t-1}, b_{t-1}) before steps t = start+1 .. end, replayed from the
    anchor after step `start` with the forward's own generator states."""
    anchor_w, anchor_b = state.anchors.pop(start)
    w, b = anchor_w.clone(), _clone(anchor_b)
    states = []
    for t in range(start + 1, end + 1):
        states.append((w.clone(), _clone(b)))
        if t < end:
            rng.restore(state.rng_states[t - 1], problem.layout.device)
            g, _ = forward_gradient(problem, w, t, meta)
            problem.kernels.sgd_step(w, g.contiguous(), b, problem.optimizer_step(t),
                                     problem.hyper)
    return states


def run_reverse(problem: InnerProblem, state: SGDForwardState, w_bar: torch.Tensor, meta,
                meta_needs_grad) -> ReverseResult:
    """Reverse pass from dF/dw_T; `result.momentum_grad` is dF/dmomentum. Consumes the
    anchors of `state`."""
    device = problem.layout.device
    constants = [x.detach() for x in meta]
    meta = [x.detach().requires_grad_(need) for x, need in zip(meta, meta_needs_grad)]
    wanted = [x for x in meta if x.requires_grad]
    meta_bar = [torch.zeros_like(x) for x in wanted]
    w_bar = w_bar.detach().clone()
    b_bar = torch.zeros_like(w_bar) if _has_momentum(problem) else None
    g_bar = torch.empty_like(w_bar)
    lr_grad = torch.zeros((), dtype=torch.float64, device=device)
    momentum_grad = torch.zeros((), dtype=torch.float64, device=device)
    hvp = None
    end = problem.steps
    with rng.preserved(device):
        for start in sorted(state.anchors, reverse=True):
            states = _replay(problem, state, constants, start, end)
            for t in range(end, start, -1):
                w_prev, b_prev = states.pop()
                rng.restore(state.rng_states[t - 1], device)
                leaf = w_prev.requires_grad_()
                g = graph_gradient(problem, leaf, t, meta)
                lr_term, momentum_term = problem.kernels.sgd_reverse(
                    w_prev.detach(), g.detach().contiguous(), b_prev, w_bar, b_bar, g_bar, hvp,
                    problem.optimizer_step(t), problem.hyper)
                lr_grad += lr_term
                momentum_grad += momentum_term
                products = torch.autograd.grad(g, [leaf, *wanted], grad_outputs=g_bar,
                                               allow_unused=True)
                hvp = (products[0].contiguous() if products[0] is not None
                       else torch.zeros_like(w_bar))
                for acc, term in zip(meta_bar, products[1:]):
                    if term is not None:
                        acc += term
            end = start
    w0_grad = w_bar if hvp is None else w_bar + hvp
    return ReverseResult(per_meta(meta_needs_grad, meta_bar), lr_grad, w0_grad,
                         DriftReport(w0=0.0), momentum_grad)
