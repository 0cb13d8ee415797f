"""The inner loop of torch.optim.SGD (plain, heavy-ball or Nesterov momentum, dampening,
coupled L2) forward, and its reverse pass, exact at any T.

Heavy-ball momentum is undone like Adam: w_{t-1} = w_t + lr b_t, the gradient recomputed
there, b_{t-1} = (b_t - (1 - dampening) ĝ_t) / momentum, re-anchored on exact states (w, b)
kept every `anchor_every` steps, since the division amplifies rounding. Plain SGD and
Nesterov cannot be undone: w_t = w_{t-1} - lr d_t with d_t built from the gradient at w_{t-1}
itself, an implicit equation for w_{t-1}. Their reverse pass replays instead: the segments
between anchors, last first, each replayed from its anchor keeping its states (at most
`anchor_every`), then walked backwards; every state is the forward's, bit for bit, at the
price of one more gradient per step. Both paths take each reverse step with the fused
kernel ops.sgd_reverse and one Hessian-vector product (docs/design.md, "SGD").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops.hyper import SGDHyper
from . import rng
from .inner import (
    Adjoints,
    DriftReport,
    InnerProblem,
    ReverseResult,
    cores_split_between_two_threads,
    forward_gradient,
    forward_steps,
    graph_gradient,
    overlapped,
    overlaps,
    per_meta,
    relative_drift,
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
    step_flops: int | None = None  # of step 1's loss and gradient, when counted (`overlaps`)


def _has_momentum(problem: InnerProblem) -> bool:
    return isinstance(problem.hyper, SGDHyper) and problem.hyper.has_momentum


def _buffer(problem: InnerProblem, w: torch.Tensor) -> torch.Tensor | None:
    return starting_buffer(problem, "b", w) if _has_momentum(problem) else None


def _clone(b: torch.Tensor | None) -> torch.Tensor | None:
    return None if b is None else b.clone()


def run_forward(problem: InnerProblem, w0: torch.Tensor, meta) -> SGDForwardState:
    """T SGD steps from w0 and the optimizer's momentum buffer (none after a fresh start)."""
    w = w0.detach().clone()
    b = _buffer(problem, w)
    anchors = {0: (w.clone(), _clone(b))}

    def update(t: int, g: torch.Tensor) -> None:
        problem.kernels.sgd_step(w, g, b, problem.optimizer_step(t), problem.hyper_at(t))
        if t < problem.steps and t % problem.anchor_every == 0:
            anchors[t] = (w.clone(), _clone(b))

    rng_states, losses, flops = forward_steps(problem, w, meta, update)
    return SGDForwardState(w0.detach(), w, b, anchors, rng_states, losses, flops)


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
                                     problem.hyper_at(t))
    return states


class _Adjoints(Adjoints):
    """SGD's adjoint half: also dF/db and dF/dmomentum."""

    def __init__(self, problem: InnerProblem, w_bar: torch.Tensor, wanted: list):
        super().__init__(problem, w_bar, wanted)
        self.b_bar = torch.zeros_like(self.w_bar) if _has_momentum(problem) else None
        self.g_bar = torch.empty_like(self.w_bar)
        self.momentum_grad = torch.zeros((), dtype=torch.float64, device=self.w_bar.device)

    def step(self, graph: tuple) -> None:
        """Reverse step t from graph = (t, leaf = w_{t-1}, g_t recomputed at it with its graph,
        b_{t-1}), one item of the primal half (`_replayed` or `_inverted`)."""
        t, leaf, g, b_prev = graph
        lr_term, momentum_term = self.problem.kernels.sgd_reverse(
            leaf.detach(), g.detach().contiguous(), b_prev, self.w_bar, self.b_bar, self.g_bar,
            self.hvp, self.problem.optimizer_step(t), self.problem.hyper_at(t))
        self.lr_terms[t - 1] = lr_term
        self.momentum_grad += momentum_term
        self.add(torch.autograd.grad(g, [leaf, *self.wanted], grad_outputs=self.g_bar,
                                     allow_unused=True))


def inverts(problem: InnerProblem) -> bool:
    """Whether the reverse pass inverts the steps (heavy-ball momentum: w_{t-1} = w_t + lr b_t)
    instead of replaying them (plain SGD, Nesterov: module docstring)."""
    h = problem.hyper
    return isinstance(h, SGDHyper) and h.has_momentum and not h.nesterov


def _replayed(problem: InnerProblem, state: SGDForwardState, meta, constants):
    """The primal half by replay: (t, w_{t-1}, g_t with its graph, b_{t-1}) for t = T..1."""
    end = problem.steps
    for start in sorted(state.anchors, reverse=True):
        states = _replay(problem, state, constants, start, end)
        for t in range(end, start, -1):
            w_prev, b_prev = states.pop()
            rng.restore(state.rng_states[t - 1], problem.layout.device)
            leaf = w_prev.requires_grad_()
            yield t, leaf, graph_gradient(problem, leaf, t, meta), b_prev
        end = start


def _inverted(problem: InnerProblem, state: SGDForwardState, meta, report: DriftReport):
    """Heavy-ball steps undone one by one: w_{t-1} = w_t + lr b_t, then g_t at w_{t-1},
    b_{t-1} = (b_t - (1 - dampening)(g_t + wd w_{t-1})) / momentum; re-anchored on the exact
    states like Adam's reverse pass (the division by momentum amplifies rounding)."""
    h = problem.hyper
    assert isinstance(h, SGDHyper)
    w, b = state.w, state.b
    assert b is not None
    for t in range(problem.steps, 0, -1):
        w.add_(b, alpha=problem.hyper_at(t).lr)
        exact = state.anchors.pop(t - 1, None)
        if exact is not None:
            drift = relative_drift(w, exact[0])
            if t == 1:
                report.w0 = drift
            else:
                report.anchors[t - 1] = {"w": drift}
            w.copy_(exact[0])
        rng.restore(state.rng_states[t - 1], problem.layout.device)
        leaf = w.clone().requires_grad_()
        g = graph_gradient(problem, leaf, t, meta)
        if problem.optimizer_step(t) > 1:  # torch's first momentum step does not read b
            g_hat = g.detach() + h.weight_decay * w
            b.sub_((1.0 - h.dampening) * g_hat).div_(h.momentum)
        if exact is not None and exact[1] is not None:
            if t > 1:
                report.anchors[t - 1]["b"] = relative_drift(b, exact[1])
            b.copy_(exact[1])
        yield t, leaf, g, b.clone()  # its own copy: b moves on to b_{t-2}


def run_reverse(problem: InnerProblem, state: SGDForwardState, w_bar: torch.Tensor, meta,
                meta_needs_grad) -> ReverseResult:
    """Reverse pass from dF/dw_T; `result.momentum_grad` is dF/dmomentum. Consumes `state`
    (its anchors, and its final state where the steps are inverted)."""
    device = problem.layout.device
    constants = [x.detach() for x in meta]
    meta = [x.detach().requires_grad_(need) for x, need in zip(meta, meta_needs_grad)]
    adjoints = _Adjoints(problem, w_bar, [x for x in meta if x.requires_grad])
    report = DriftReport(w0=0.0)
    graphs = (_inverted(problem, state, meta, report) if inverts(problem)
              else _replayed(problem, state, meta, constants))
    with rng.preserved(device):
        if overlaps(problem, state):  # small steps on 2+ threads, as Adam's (engine/inner.py)
            with cores_split_between_two_threads():
                overlapped(graphs, adjoints.step)
        else:
            for graph in graphs:
                adjoints.step(graph)
    return ReverseResult(per_meta(meta_needs_grad, adjoints.meta_bar),
                         problem.lr_grad_of(adjoints.lr_terms),
                         adjoints.finish(), report, adjoints.momentum_grad, adjoints.touched)
