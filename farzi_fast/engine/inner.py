"""The inner loop (T Adam steps) forward, and its reverse pass with the fused kernels.

Forward keeps only the final state (w_T, m_T, v_T), the exact anchors every K steps when
asked, and one generator state per step. The reverse pass has two halves. The primal half
walks t = T..1: reconstruct w_{t-1} (ops.adam_reverse_params), recompute g_t at w_{t-1}
with create_graph=True, reconstruct m_{t-1}, v_{t-1} (ops.adam_reverse_moments). The adjoint
half takes each step's graph and updates the adjoints with the same two kernels, forming
g_bar, and one double-backward call gives both Hessian-vector products, with respect to w
and to the meta tensors. The primal half never waits for the adjoints, so on a CPU it runs
one step ahead on the calling thread while a second thread does the adjoint half.

With `compiled` (engine/compiled.py), every step but the first (InnerProblem.compiles) runs
as torch.compile'd pure functions instead: forward, the gradient with no graph; reverse, one
call per step that gives g_t and both Hessian-vector products along g_bar, so the two halves
of that step run in one pass, in turn.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..ops.hyper import AdamHyper, SGDHyper
from . import rng
from .flat import FlatLayout, FunctionalModel


@dataclass
class InnerProblem:
    """Everything that defines the inner loop, validated."""

    functional: FunctionalModel
    loss_fn: Callable[..., torch.Tensor]  # loss_fn(f, t, *meta) -> scalar tensor
    steps: int
    hyper: AdamHyper | SGDHyper  # SGD's problems run in engine/sgd.py
    anchor_every: int
    anchor_head: int
    # The backend module itself (ops.dispatch.resolve), called without the public ops' checks:
    # the engine's buffers are valid by construction (one flat dtype/device/size, contiguous,
    # never aliased), and those checks cost 30 us a call, 6% of a small MLP's step.
    kernels: Any
    compiled: bool = False  # per-step math by engine/compiled.py instead of eager autograd
    # torch.optim.Adam's weight_decay: added to the gradient (coupled L2), where AdamW's
    # decoupled decay is in `hyper`
    coupled_l2: float = 0.0
    # the optimizer's state at the start: steps it has taken and its buffers, flat ("m", "v"
    # for Adam, "b" for SGD's momentum buffer); a fresh start when empty
    steps_taken: int = 0
    start: dict = field(default_factory=dict)
    # flat meta index -> "meta[i].name" for the parameters of modules given in meta=
    module_meta: dict = field(default_factory=dict)
    # one hyperparameter set per step when the lr is one per step (a tensor of T values)
    per_step: tuple = ()

    def hyper_at(self, t: int):
        """Step t's hyperparameters: `hyper`, with step t's lr where there is one per step."""
        return self.per_step[t - 1] if self.per_step else self.hyper

    def lr_grad_of(self, per_step_terms: torch.Tensor) -> torch.Tensor:
        """dF/dlr from each step's term: one per step, or their sum for one lr."""
        return per_step_terms if self.per_step else per_step_terms.sum()

    def optimizer_step(self, t: int) -> int:
        """The optimizer's own step number of inner step t (bias corrections, SGD's first
        momentum step): t after a fresh start, later when the optimizer has taken steps."""
        return self.steps_taken + t

    def compiles(self, t: int) -> bool:
        """Whether step t runs compiled: under `compiled`, every step but the first. Step 1's
        update is nearly lr * sign(g), whose derivative is a cancellation that magnifies the
        gradient's relative rounding; Inductor's reductions round worse than ATen's cascade
        sums (bias gradients: 3e-7 against 1e-7), and with step 1 compiled too the float32
        meta-gradient of the SASRec workload was 2.7x less accurate than float32 unrolled
        autograd's (T = 20), with it eager as accurate (docs/design.md, "Anchors")."""
        return self.compiled and t > 1

    def is_anchor(self, t: int) -> bool:
        """Whether the exact state after step t is kept (never after the last step: the
        reverse pass starts from that one)."""
        return t < self.steps and (t <= self.anchor_head or t % self.anchor_every == 0)

    @property
    def layout(self) -> FlatLayout:
        return self.functional.layout


@dataclass
class DriftReport:
    """How far float reversal wandered from the true trajectory (relative L2 norms).

    `w0` compares the reconstructed initial parameters with the true ones: a free health
    check of every reverse pass. `anchors` maps each anchor step t to the drift of the
    reconstructed (w_t, m_t, v_t) that re-anchoring corrected there.
    """

    w0: float = math.nan
    anchors: dict[int, dict[str, float]] = field(default_factory=dict)

    @property
    def max_anchor_drift(self) -> float:
        return max((max(d.values()) for d in self.anchors.values()), default=0.0)

    def __str__(self) -> str:
        """One line for print(); the per-anchor detail stays in `anchors`."""
        if not self.anchors:
            return f"drift: w0 {self.w0:.2g}, no anchors"
        worst = max(self.anchors, key=lambda t: max(self.anchors[t].values()))
        return (f"drift: w0 {self.w0:.2g}; {len(self.anchors)} anchors, largest drift "
                f"corrected {self.max_anchor_drift:.2g} (step {worst})")


class NonFiniteError(ValueError):
    """The inner loop produced a NaN or infinite loss or gradient; names the first step."""


@dataclass
class ForwardState:
    w0: torch.Tensor
    w: torch.Tensor
    m: torch.Tensor
    v: torch.Tensor
    anchors: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    rng_states: list
    inner_losses: torch.Tensor  # one per step, detached
    step_flops: int | None = None  # of step 1's loss and gradient, when counted (`overlaps`)


def relative_drift(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(torch.finfo(b.dtype).tiny)).item()


def _inner_loss(problem: InnerProblem, w: torch.Tensor, t: int, meta) -> torch.Tensor:
    loss = problem.loss_fn(problem.functional.bind(w), t, *meta)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"loss_fn must return a scalar tensor; at step {t} it returned {shape}")
    if not loss.requires_grad:
        raise ValueError(f"loss_fn's value at step {t} does not depend on the model's "
                         f"parameters (it does not require grad)")
    return loss.reshape(())


def starting_buffer(problem: InnerProblem, name: str, w: torch.Tensor) -> torch.Tensor:
    """A copy of the optimizer's starting buffer `name`, zeros after a fresh start."""
    given = problem.start.get(name)
    return given.clone() if given is not None else torch.zeros_like(w)


def forward_gradient(problem: InnerProblem, w: torch.Tensor, t: int, meta,
                     counter=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(g_t, loss_t) at w without a graph: g includes Adam's coupled L2. Step 1 also checks
    what would make the reverse pass differentiate something else than this loop: tensors
    the loss closes over, buffers the model changes."""
    if problem.compiles(t):
        from . import compiled  # imports torch._dynamo: only for those who ask for it

        g, loss = compiled.gradient_and_loss(problem.functional, problem.loss_fn, w, t, meta)
    else:
        with torch.enable_grad(), (counter if t == 1 and counter else
                                   contextlib.nullcontext()):
            leaf = w.detach().requires_grad_()
            loss = _inner_loss(problem, leaf, t, meta)
            if t == 1:
                _refuse_closed_over(loss, leaf)
            (g,) = torch.autograd.grad(loss, leaf)
    # Checked by value after the first step only: a module that updates its buffers
    # (BatchNorm in train mode) does so at every step, and comparing costs a pass.
    changed = problem.functional.changed_buffers() if t == 1 else []
    if changed:
        raise ValueError(
            f"the model changed its buffers {changed} during step {t}: the reverse pass "
            f"recomputes every gradient and needs them fixed. Use model.eval() for "
            f"BatchNorm-style layers (or track_running_stats=False); the model itself "
            f"was not modified")
    if problem.coupled_l2:
        g = g.add(w, alpha=problem.coupled_l2)  # as torch.optim.Adam adds it
    return g, loss


def graph_gradient(problem: InnerProblem, leaf: torch.Tensor, t: int, meta) -> torch.Tensor:
    """g_t at `leaf` with create_graph=True (coupled L2 included, so Hessian-vector products
    through it carry the decay's term)."""
    with torch.enable_grad():
        loss = _inner_loss(problem, leaf, t, meta)
        (g,) = torch.autograd.grad(loss, leaf, create_graph=True)
        if problem.coupled_l2:
            g = g.add(leaf, alpha=problem.coupled_l2)
    return g


def first_non_finite(losses: torch.Tensor, finite_grads: torch.Tensor) -> None:
    """Raise NonFiniteError naming the first step whose loss or gradient was not finite, not
    the later ones it poisoned."""
    bad = (~(torch.isfinite(losses) & finite_grads)).nonzero()
    if len(bad):
        t = int(bad[0]) + 1
        if not torch.isfinite(losses[t - 1]):
            raise NonFiniteError(f"loss_fn returned a non-finite value "
                                 f"({losses[t - 1].item()}) at step {t}")
        raise NonFiniteError(f"the gradient of loss_fn at step {t} is not finite (the loss, "
                             f"{losses[t - 1].item():.6g}, is)")


def forward_steps(problem: InnerProblem, w: torch.Tensor, meta, update) -> tuple:
    """The forward loop every optimizer shares: for t = 1..T, g_t at w (a generator state
    kept per step), then update(t, g_t), which moves w. Returns (generator states, the inner
    losses, step 1's FLOPs when counted for `overlaps`); raises NonFiniteError naming the first
    step whose loss or gradient was not finite."""
    device = problem.layout.device
    meta = [x.detach() for x in meta]
    rng_states = []
    losses = torch.empty(problem.steps, dtype=w.dtype, device=device)
    finite_grads = torch.empty(problem.steps, dtype=torch.bool, device=device)
    counter = FlopCounterMode(display=False) if may_overlap(problem) else None
    for t in range(1, problem.steps + 1):
        rng_states.append(rng.capture(device))
        g, loss = forward_gradient(problem, w, t, meta, counter)
        losses[t - 1] = loss.detach()
        finite_grads[t - 1] = g.isfinite().all()  # no sync: checked once, after the loop
        update(t, g.contiguous())
    first_non_finite(losses, finite_grads)
    return rng_states, losses, counter.get_total_flops() if counter else None


def run_forward(problem: InnerProblem, w0: torch.Tensor, meta) -> ForwardState:
    """T Adam steps from w0 and the optimizer's starting moments (zeros after a fresh
    start); nothing per step but a generator state."""
    w = w0.detach().clone()
    m, v = starting_buffer(problem, "m", w), starting_buffer(problem, "v", w)
    anchors = {}

    def update(t: int, g: torch.Tensor) -> None:
        problem.kernels.adam_step(w, g, m, v, problem.optimizer_step(t), problem.hyper_at(t))
        if problem.is_anchor(t):
            anchors[t] = (w.clone(), m.clone(), v.clone())

    rng_states, losses, flops = forward_steps(problem, w, meta, update)
    return ForwardState(w0.detach(), w, m, v, anchors, rng_states, losses, flops)


def _refuse_closed_over(loss: torch.Tensor, params: torch.Tensor) -> None:
    """Refuse an inner loss that reaches a tensor requiring grad other than the parameters:
    one it closes over instead of receiving through `meta=`, which the reverse pass would
    leave without a gradient, silently."""
    seen, stack, found = set(), [loss.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # an AccumulateGrad: a leaf's gradient
        if variable is not None and variable is not params:
            found.append(variable)
        stack.extend(next_node for next_node, _ in node.next_functions)
    if found:
        shapes = ", ".join(f"{tuple(x.shape)} {x.dtype}" for x in found[:3])
        raise ValueError(
            f"loss_fn reaches {len(found)} tensor(s) that require grad but are not meta "
            f"(shapes {shapes}): the reverse pass would give them no gradient. Pass them "
            f"with meta=(...) and use the copies loss_fn receives as loss_fn(f, t, *meta), or "
            f"detach them if they are constants")


@dataclass
class ReverseResult:
    meta_grads: list  # per meta tensor: gradient or None (when it does not require grad)
    lr_grad: torch.Tensor  # float64, 0-d (one lr) or one per step
    w0_grad: torch.Tensor
    report: DriftReport
    momentum_grad: torch.Tensor | None = None  # dF/dmomentum, for SGD with momentum
    touched: list | None = None  # per meta tensor wanted: whether any step's loss used it


@dataclass
class _StepGraph:
    """What the adjoint half of reverse step t takes from the primal half."""

    t: int
    state: tuple  # copies of (w_t, m_t, v_t)
    leaf: torch.Tensor  # w_{t-1}, the input of g's graph
    g: torch.Tensor  # g_t at w_{t-1}, with its graph (create_graph=True)


def _zero_adjoints(state: ForwardState) -> list:
    """Zero (w_bar, m_bar, v_bar, g_bar) for the kernels' adjoint arguments where only the
    primal states are reconstructed: they stay zero."""
    return [torch.zeros_like(state.w) for _ in range(4)]


def _primal_steps(problem: InnerProblem, state: ForwardState, meta, report: DriftReport):
    """Walk the trajectory backwards, yielding step T's graph, then T-1's, ... 1's.

    None of this needs the adjoints, so it can run ahead of them. The fused kernels also
    update adjoints; here they get zero ones (`nothing`) that stay zero.
    """
    nothing = _zero_adjoints(state)
    for t in range(problem.steps, 0, -1):
        # A call, not inline code: no local of this generator keeps step t's graph alive
        # while step t-1's is built.
        yield _primal_step(problem, state, meta, report, nothing, t)


def _reverse_params(problem: InnerProblem, state: ForwardState, report: DriftReport,
                    nothing: list, t: int):
    """Reconstruct w_{t-1} in state.w, re-anchored on the exact state after step t-1 where
    there is one; (copies of (w_t, m_t, v_t) for the adjoints, that exact state or None)."""
    h, kernels = problem.hyper_at(t), problem.kernels
    w, m, v = state.w, state.m, state.v
    saved = (w.clone(), m.clone(), v.clone())
    kernels.adam_reverse_params(w, m, v, *nothing[:3], None, problem.optimizer_step(t), h)
    # Re-anchor on the exact state after step t-1 as soon as each part of it is
    # reconstructed: w before g_t is recomputed at it, m and v after the moments.
    exact = state.anchors.pop(t - 1, None)  # each anchor is freed once used
    if exact is not None:
        report.anchors[t - 1] = {"w": relative_drift(w, exact[0])}
        w.copy_(exact[0])
    if t == 1:
        # w0 is known exactly (kept for this report; m0 and v0 are constants whose adjoints
        # are not wanted). Step 1 needs it most:
        # its update is nearly lr * sign(g), so g_bar = dF/dg is a cancellation that turns a
        # 1e-8 relative error in a reconstructed w0 into a 2e-2 error of the float32
        # meta-gradient on the SASRec workload (docs/design.md, "Anchors").
        report.w0 = relative_drift(w, state.w0)
        w.copy_(state.w0)
    rng.restore(state.rng_states[t - 1], problem.layout.device)  # step t's own draws
    return saved, exact


def _reverse_moments(problem: InnerProblem, state: ForwardState, g: torch.Tensor, exact,
                     report: DriftReport, nothing: list, t: int) -> None:
    """Reconstruct m_{t-1} and v_{t-1} from g_t, re-anchored like w."""
    problem.kernels.adam_reverse_moments(state.m, state.v, g.detach().contiguous(), nothing[1],
                                         nothing[2], nothing[3], problem.hyper)
    if exact is not None:
        for name, got, want in (("m", state.m, exact[1]), ("v", state.v, exact[2])):
            report.anchors[t - 1][name] = relative_drift(got, want)
            got.copy_(want)


def _primal_step(problem: InnerProblem, state: ForwardState, meta, report: DriftReport,
                 nothing: list, t: int) -> _StepGraph:
    """Reconstruct w_{t-1}, recompute g_t there with create_graph=True, reconstruct m_{t-1}
    and v_{t-1}."""
    saved, exact = _reverse_params(problem, state, report, nothing, t)
    # Its own storage: w moves on to w_{t-2} while this graph may still be in use.
    leaf = state.w.clone().requires_grad_()
    g = graph_gradient(problem, leaf, t, meta)
    _reverse_moments(problem, state, g, exact, report, nothing, t)
    return _StepGraph(t, saved, leaf, g)


class Adjoints:
    """What every optimizer's adjoint half keeps: dF/dw, each step's dF/dlr term, dF/dmeta,
    and the Hessian-vector product the next reverse step starts from."""

    def __init__(self, problem: InnerProblem, w_bar: torch.Tensor, wanted: list):
        self.problem, self.wanted = problem, wanted
        self.w_bar = w_bar.detach().clone()
        self.lr_terms = torch.zeros(problem.steps, dtype=torch.float64,
                                    device=self.w_bar.device)
        self.meta_bar = [torch.zeros_like(x) for x in wanted]
        self.touched = [False] * len(wanted)  # whether any step's loss used each
        self.hvp: torch.Tensor | None = None

    def add(self, hvps) -> None:
        """Take step t's (H g_bar, then the mixed term of each wanted meta tensor)."""
        self.hvp = hvps[0].contiguous() if hvps[0] is not None else torch.zeros_like(self.w_bar)
        for i, term in enumerate(hvps[1:]):
            if term is not None:
                self.meta_bar[i] += term
                self.touched[i] = True

    def finish(self) -> torch.Tensor:
        """dF/dw0: completes step 1 (the adjoints of the optimizer's starting state are not
        wanted: it is a constant)."""
        return self.w_bar if self.hvp is None else self.w_bar + self.hvp


class _Adjoints(Adjoints):
    """Adam's adjoint half: (w_bar, m_bar, v_bar), dF/dlr and dF/dmeta, updated one step at a
    time (T first)."""

    def __init__(self, problem: InnerProblem, w_bar: torch.Tensor, wanted: list):
        super().__init__(problem, w_bar, wanted)
        self.m_bar, self.v_bar, self.g_bar = (torch.zeros_like(self.w_bar) for _ in range(3))

    def step(self, graph: _StepGraph) -> None:
        """Step graph.t from its eager graph."""
        self.params(graph.state, graph.t)
        _, m, v = graph.state
        self.problem.kernels.adam_reverse_moments(m, v, graph.g.detach().contiguous(),
                                                  self.m_bar, self.v_bar, self.g_bar,
                                                  self.problem.hyper)
        self.add(torch.autograd.grad(graph.g, [graph.leaf, *self.wanted],
                                     grad_outputs=self.g_bar, allow_unused=True))

    def params(self, state: tuple, t: int) -> None:
        """The adjoints through step t's parameter update, from copies of (w_t, m_t, v_t)
        (overwritten) and the previous step's Hessian-vector product."""
        self.lr_terms[t - 1] = self.problem.kernels.adam_reverse_params(
            *state, self.w_bar, self.m_bar, self.v_bar, self.hvp,
            self.problem.optimizer_step(t), self.problem.hyper_at(t))



def _compiled_reverse(problem: InnerProblem, state: ForwardState, meta, needs,
                      report: DriftReport, adjoints: _Adjoints) -> None:
    """The reverse pass with compiled steps: both halves of a step in one pass, since one
    compiled call gives g_t (which the primal half needs to reverse m and v) and both
    products along g_bar, so g_t is computed once. Step 1 is the eager one."""
    from . import compiled

    nothing = _zero_adjoints(state)
    constants = [x.detach() for x in meta]
    for t in range(problem.steps, 0, -1):
        if not problem.compiles(t):
            adjoints.step(_primal_step(problem, state, meta, report, nothing, t))
            continue
        saved, exact = _reverse_params(problem, state, report, nothing, t)
        adjoints.params(saved, t)
        g, *hvps = compiled.reverse_step(problem.functional, problem.loss_fn, state.w, t,
                                         constants, needs, adjoints.m_bar, adjoints.v_bar,
                                         problem.hyper, problem.coupled_l2)
        _reverse_moments(problem, state, g, exact, report, nothing, t)
        adjoints.add(hvps)


def overlapped(items, consume) -> None:
    """consume(item) for every item of the iterator `items`, on a second thread, so that
    producing item k+1 overlaps consuming item k. The handoff is a rendezvous: the producer
    waits until the worker has taken item k before it starts item k+2, so at most two items
    are alive at once (each holds a step's graph)."""
    handoff: queue.Queue = queue.Queue(maxsize=1)
    failure: list[BaseException] = []

    def worker():
        while True:
            item = handoff.get()
            handoff.task_done()  # taken: the producer may go on
            if item is None:
                return
            if not failure:  # after a failure, only drain until the producer stops
                try:
                    consume(item)
                except BaseException as error:  # handed to the calling thread below
                    failure.append(error)
            del item

    thread = threading.Thread(target=worker, name="farzi_fast-adjoints", daemon=True)
    thread.start()
    try:
        for item in items:
            if failure:
                break
            handoff.put(item)
            del item  # the worker holds it now
            handoff.join()
    finally:
        handoff.put(None)
        thread.join()
    if failure:
        raise failure[0]


# Overlapping gives each half of the reverse pass half of torch's intra-op threads. That
# pays while a step's ops are too small for two threads to share them, and costs once they
# are large enough to use both cores. Measured on 2 cores at T = 50-100, time / unrolled
# autograd overlapped vs sequential: small causal Transformer
# (23 MFLOP per step) 0.86 vs 1.12; SASRec distillation workload (1.2 GFLOP) 1.39 vs 1.12.
# The cut is between them; steps are counted by torch's FlopCounterMode (matmuls,
# convolutions, attention), deterministically, so a given problem always takes the same path.
OVERLAP_MAX_STEP_FLOPS = 200e6


def may_overlap(problem: InnerProblem) -> bool:
    """Whether the reverse pass could overlap its halves here: on CPUs with at least two
    threads for torch, and not for compiled steps (module docstring). Not yet on GPUs:
    unmeasured there, and both threads' CUDA work would share one stream."""
    return (problem.layout.device.type == "cpu" and torch.get_num_threads() >= 2
            and not problem.compiled)


class _CountedFirstStep(Protocol):
    step_flops: int | None


def overlaps(problem: InnerProblem, state: _CountedFirstStep) -> bool:
    """Whether the reverse pass runs its two halves on two threads: where it may, and when
    step 1's loss and gradient took fewer than OVERLAP_MAX_STEP_FLOPS."""
    return (may_overlap(problem) and state.step_flops is not None
            and state.step_flops < OVERLAP_MAX_STEP_FLOPS)


class _CoresSplit:
    """Halves torch's intra-op threads while two threads compute, and restores them after.

    Measured on 2 cores: with both threads on 2 intra-op threads each,
    OpenMP's spinning workers took the cores from the other thread and overlapping was slower
    than not; with 1 each, a meta-gradient of the benchmark Transformer (T = 100) took 1.24 s
    instead of 1.59 s without overlap. Global while it lasts: torch work on other threads of
    the process sees the halved count. Reverse passes running at the same time on several
    threads share one halving; the last to finish restores the count.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._users = 0
        self._before = 0

    @contextlib.contextmanager
    def __call__(self):
        with self._lock:
            if self._users == 0:
                self._before = torch.get_num_threads()
                torch.set_num_threads(max(1, self._before // 2))
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    torch.set_num_threads(self._before)


cores_split_between_two_threads = _CoresSplit()


def run_reverse(problem: InnerProblem, state: ForwardState, w_bar: torch.Tensor, meta,
                meta_needs_grad) -> ReverseResult:
    """Reverse pass from dF/dw_T. Consumes `state` (its buffers are reconstructed in place).
    The same kernels run on the same values whether or not the halves overlap: at the same
    number of intra-op threads the result is the same bit for bit."""
    device = problem.layout.device
    meta = [x.detach().requires_grad_(need) for x, need in zip(meta, meta_needs_grad)]
    report = DriftReport()
    adjoints = _Adjoints(problem, w_bar, [x for x in meta if x.requires_grad])
    with rng.preserved(device):
        if problem.compiled:
            _compiled_reverse(problem, state, meta, list(meta_needs_grad), report, adjoints)
        elif overlaps(problem, state):
            with cores_split_between_two_threads():
                overlapped(_primal_steps(problem, state, meta, report), adjoints.step)
        else:
            for graph in _primal_steps(problem, state, meta, report):
                adjoints.step(graph)
    return ReverseResult(per_meta(meta_needs_grad, adjoints.meta_bar),
                         problem.lr_grad_of(adjoints.lr_terms),
                         adjoints.finish(), report, touched=adjoints.touched)


def per_meta(needs, values) -> list:
    """One slot per meta tensor: the next of `values` (given for those that need a gradient,
    in order) where `needs`, None elsewhere."""
    values = iter(values)
    return [next(values) if need else None for need in needs]
