"""`unroll()` and `meta_gradient()`: meta-gradients through T Adam, AdamW or SGD steps of any
nn.Module."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .._checks import require_int
from ..ops.dispatch import resolve
from ..ops.hyper import SGDHyper
from ..ops.validation import SUPPORTED_DTYPES
from . import inner, sgd
from .flat import FlatLayout, FunctionalModel
from .inner import DriftReport, InnerProblem, per_meta
from .meta import MetaArguments, expand, warn_untouched
from .optimizers import InnerOptimizer, from_keywords, from_optimizer, per_step_hypers

# Anchors: exact (w, m, v) states the reverse pass re-synchronises on, 3 P values each.
# Two effects need them (docs/design.md, "Anchors"):
# - reconstructing m divides by beta1 every step, so errors grow like beta1^-K between
#   anchors K steps apart (float32 pure reversal is NaN by T = 300);
# - in Adam's first steps the bias-corrected update is nearly g/|g|, whose derivative the
#   reverse pass forms as the difference of two large terms; float32 errors in the
#   reconstructed v survive that cancellation: with no exact head, anchors every 10 steps
#   still gave 7e-2 relative error at T = 300, with the first 8 states exact 2e-6.
DEFAULT_ANCHOR_EVERY = 25
DEFAULT_ANCHOR_HEAD = 8


class Trained(dict):
    """The trained parameters, name -> tensor (views into one flat buffer), differentiable
    with respect to meta, lr and init. After backward, `report` holds the drift report."""

    report: DriftReport | None = None
    inner_losses: torch.Tensor | None = None


@dataclass
class MetaGradient:
    value: torch.Tensor            # the meta-objective F at the trained parameters
    meta_grads: tuple              # dF/d meta[i] (None where meta[i] does not require grad)
    lr_grad: torch.Tensor          # dF/dlr, float64 0-d
    init_grads: dict               # name -> dF/dw0
    report: DriftReport
    inner_losses: torch.Tensor     # inner loss of every step
    momentum_grad: torch.Tensor | None = None  # dF/dmomentum (SGD with momentum), float64 0-d


def _passes(problem: InnerProblem):
    """The forward and reverse pass of the problem's optimizer."""
    if isinstance(problem.hyper, SGDHyper):
        return sgd.run_forward, sgd.run_reverse
    return inner.run_forward, inner.run_reverse


def _reverse(problem: InnerProblem, state, w_bar: torch.Tensor, meta, needs):
    """The problem's reverse pass, warning about meta-module parameters no loss used."""
    result = _passes(problem)[1](problem, state, w_bar, meta, needs)
    warn_untouched(problem.module_meta, needs, result.touched)
    return result


def _inner_optimizer(model, layout: FlatLayout, optimizer, lr, betas, eps,
                     weight_decay) -> InnerOptimizer:
    if optimizer is None:
        return from_keywords(lr, betas, eps, weight_decay)
    return from_optimizer(optimizer, model, layout, dict(
        lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))


def _problem(model, loss_fn, steps, optimizer, lr, betas, eps, weight_decay, anchor_every,
             anchor_head, backend, compile) -> tuple[InnerProblem, InnerOptimizer]:
    steps = require_int("steps", steps, 1, "the number of inner optimizer steps")
    autocast = [d for d in ("cpu", "cuda") if torch.is_autocast_enabled(d)]
    if autocast:
        # the reverse pass recomputes each step's gradient later, outside this context: under
        # autocast it would differentiate another function than the forward ran
        raise ValueError(f"unroll/meta_gradient called under torch.autocast ({autocast[0]}): "
                         f"the reverse pass recomputes every step outside it, so the gradient "
                         f"would silently differ; call it outside autocast (mixed precision "
                         f"inner loops are not supported)")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(f, t, *meta), got "
                        f"{type(loss_fn).__name__}")
    layout = FlatLayout.of(model)
    if layout.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"model parameters must be float32 or float64 for the optimizer "
                        f"kernels, got {layout.dtype}; convert with model.float() or "
                        f"model.double()")
    chosen = _inner_optimizer(model, layout, optimizer, lr, betas, eps, weight_decay)
    anchor_every = require_int("anchor_every", DEFAULT_ANCHOR_EVERY if anchor_every is None
                               else anchor_every, 1, "steps between exact anchors")
    anchor_head = require_int("anchor_head", DEFAULT_ANCHOR_HEAD if anchor_head is None
                              else anchor_head, 0, "first steps whose states are all kept")
    kernels = resolve(backend, layout.device)  # refuses an unusable backend before any work
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be True or False, got {compile!r}")
    if compile and chosen.is_sgd:
        raise ValueError("compile=True runs Adam and AdamW inner loops only; SGD runs eager "
                         "(compile=False)")
    problem = InnerProblem(FunctionalModel(model, layout), loss_fn, steps, chosen.hyper,
                           anchor_every, anchor_head, kernels, compile, chosen.coupled_l2,
                           chosen.steps_taken, chosen.start,
                           per_step=per_step_hypers(chosen, steps))
    return problem, chosen


def _meta_for(problem: InnerProblem, meta) -> MetaArguments:
    """The flat meta tensors, with the problem's loss taking them in place of any module."""
    spec = expand(meta, problem.layout)
    problem.loss_fn = spec.wrap(problem.loss_fn)
    problem.module_meta = spec.module_names
    return spec


def _initial(layout: FlatLayout, model: nn.Module, init) -> torch.Tensor:
    if init is None:
        params = dict(model.named_parameters())
        return torch.cat([params[n].detach().reshape(-1) for n in layout.names])
    return layout.flatten(init, "init")


class _UnrollFunction(torch.autograd.Function):
    """w_T = unroll(lr, w0, *meta): forward runs the inner loop, backward its reverse."""

    @staticmethod
    def forward(ctx, problem, trained, lr_input, w0, *meta):
        state = _passes(problem)[0](problem, w0, meta)
        ctx.problem, ctx.state, ctx.trained = problem, state, trained
        ctx.lr_like = lr_input.detach() if lr_input is not None else None
        ctx.save_for_backward(*meta)
        trained.inner_losses = state.inner_losses
        return state.w.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, w_bar):
        if ctx.state is None:
            raise RuntimeError("unroll() supports one backward pass: the reverse pass "
                               "reconstructs the trajectory in place; call unroll() again")
        meta = ctx.saved_tensors
        needs = ctx.needs_input_grad[4:]
        result = _reverse(ctx.problem, ctx.state, w_bar, meta, needs)
        ctx.state = None
        ctx.trained.report = result.report
        lr_grad = None
        if ctx.needs_input_grad[2]:
            lr_grad = result.lr_grad.to(ctx.lr_like.dtype).reshape(ctx.lr_like.shape)
        return (None, None, lr_grad, result.w0_grad, *result.meta_grads)


def unroll(model, loss_fn, steps, *, meta=(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
           weight_decay=0.0, init=None, anchor_every=None, anchor_head=None,
           backend="auto", compile=False, optimizer=None) -> Trained:
    """Train a functional copy of `model` for `steps` optimizer steps; return its parameters.

    `loss_fn(f, t, *meta)` is the inner loss of step t (1-based), where `f(*args, **kwargs)`
    calls the model with the current parameters. The optimizer is the user's own
    `optimizer=` (a torch.optim.SGD, Adam or AdamW, continued from its state if it has taken
    steps), or, from the keywords, torch.optim.Adam (AdamW when `weight_decay > 0`). The
    model's own parameters and buffers, and the optimizer, are left untouched.

    The result (a dict name -> tensor) is differentiable: a backward through any function of
    it fills `.grad` of the tensors in `meta` that require grad, of `lr` when it is a tensor
    that requires grad, and of the `init` tensors (default: the model's parameters, detached)
    that require grad. That backward is the reverse pass with the fused kernels; one
    backward per call.

    Memory does not grow with `steps` beyond the anchors, exact states of 3 P values kept
    after each of the first `anchor_head` steps (default 8) and every `anchor_every` steps
    (default 25). ``anchor_every=steps, anchor_head=0`` is pure reversal (the paper's scheme,
    O(1) memory, exact only in float64 and for short loops). SGD keeps (w, b) every
    `anchor_every` steps: heavy-ball momentum is undone like Adam; plain SGD and Nesterov
    cannot be, and replay each segment from its anchor instead (engine/sgd.py): exact, one
    more gradient per step, `anchor_every` more states.

    On a CPU with two or more torch threads, when a step is small (step 1's loss and
    gradient under 200 MFLOP, counted by torch's FlopCounterMode), the reverse pass overlaps
    its two halves on two threads, each with half of torch's intra-op threads while it runs
    (restored after); larger steps use all threads in turn, which is faster for them.
    Calls on one model object from several threads at once are not supported
    (functional_call swaps the module's tensors while it runs).

    `compile=True` runs every step but the first as torch.compile'd torch.func functions
    (engine/compiled.py): forward, the gradient; reverse, one call giving g_t and both
    Hessian-vector products, so g_t is computed once per reverse step and no autograd graph
    is built. It needs what torch.compile needs (a C++ compiler on CPUs, Triton on GPUs),
    `loss_fn` traceable by torch.compile (no .item(), no data-dependent Python branches),
    and pays the compilation once per process and model shape (~10-60 s), so it is for long
    runs. The reverse pass then runs its steps in turn (no overlap of halves). Results agree
    with the eager engine to rounding, not bit for bit; speed and accuracy on the
    distillation workload: docs/design.md, "Anchors".

    Args:
        model: any nn.Module with float32 or float64 parameters (not modified).
        loss_fn: `loss_fn(f, t, *meta) -> scalar tensor`, the inner loss of step t = 1..steps.
        steps: inner optimizer steps, T.
        meta: tensors, or nn.Modules, that `loss_fn` receives after `t`; those requiring
            grad get `.grad`. A module stands for its parameters that require grad: while
            `loss_fn` runs they are swapped for the engine's copies, so a loss that calls the
            module (any method, e.g. `distilled_data.get_batch(t)`) or closes over it is
            differentiated (engine/meta.py).
        lr: float, or a 0-d tensor (requiring grad for dF/dlr), or a tensor of `steps`
            values, one lr per step (its gradient then has one value per step).
        betas, eps, weight_decay: torch.optim.Adam's (AdamW's decoupled decay when > 0),
            when no `optimizer` is given.
        init: the starting parameters, name -> tensor (default: the model's, detached).
        anchor_every, anchor_head: the anchors' schedule (defaults 25 and 8).
        backend: the ops backend ("auto", "cpu", "cuda", "triton", "torch").
        compile: run the steps torch.compile'd (above).
        optimizer: a torch.optim.SGD, Adam or AdamW over `model.parameters()` whose
            hyperparameters, and state if it has taken steps, to use instead of the keywords
            (engine/optimizers.py says what is refused); it is not modified. A tensor `lr`
            given beside it replaces its lr, to learn it.

    Returns:
        Trained: the parameters after `steps` steps, name -> tensor, differentiable with
        respect to `meta`, `lr` and `init`; `.report` gives the reverse pass's drift.

    Raises:
        TypeError: a model, loss or argument of the wrong kind.
        ValueError: meta tensors on another device or of a non-float dtype, a bad lr.
        NonFiniteError: the inner loss or a state is not finite.
        RuntimeError: a second backward through the same result.
    """
    problem, chosen = _problem(model, loss_fn, steps, optimizer, lr, betas, eps, weight_decay,
                               anchor_every, anchor_head, backend, compile)
    layout = problem.layout
    spec = _meta_for(problem, meta)
    w0 = _initial(layout, model, init)
    lr_input = chosen.lr if isinstance(chosen.lr, torch.Tensor) else None
    trained = Trained()
    w_T = _UnrollFunction.apply(problem, trained, lr_input, w0, *spec.tensors)
    trained.update(layout.views(w_T))
    return trained


def meta_gradient(model, loss_fn, outer_fn, steps, *, meta=(), lr=1e-3, betas=(0.9, 0.999),
                  eps=1e-8, weight_decay=0.0, init=None, anchor_every=None,
                  anchor_head=None, backend="auto", compile=False, optimizer=None) -> MetaGradient:
    """The meta-objective `outer_fn(f)` after `steps` inner optimizer steps, and its gradients
    with respect to every meta tensor that requires grad, the learning rate, SGD's momentum
    and the initial parameters, in one call.

    Args:
        model, loss_fn, steps, meta, lr, betas, eps, weight_decay, init, anchor_every,
            anchor_head, backend, compile, optimizer: as for :func:`unroll`.
        outer_fn: `outer_fn(f) -> scalar tensor`, where `f` calls the model with the trained
            parameters.

    Returns:
        MetaGradient: the meta-objective's value and its gradients (per meta item: a tensor,
        or for a module a dict name -> tensor, also added to its parameters' `.grad`; lr;
        SGD's momentum; the initial parameters) and the reverse pass's report.

    Raises:
        ValueError: `outer_fn` does not return a scalar tensor; else as :func:`unroll`.
    """
    problem, _ = _problem(model, loss_fn, steps, optimizer, lr, betas, eps, weight_decay,
                          anchor_every, anchor_head, backend, compile)
    layout = problem.layout
    spec = _meta_for(problem, meta)
    meta = spec.tensors
    w0 = _initial(layout, model, init).detach()
    state = _passes(problem)[0](problem, w0, meta)
    needs = [x.requires_grad for x in meta]
    with torch.enable_grad():
        w_T = state.w.detach().requires_grad_()
        value = outer_fn(problem.functional.bind(w_T))
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise ValueError("outer_fn must return a scalar tensor")
        direct = [x for x in meta if x.requires_grad]
        grads = torch.autograd.grad(value, [w_T, *direct], allow_unused=True)
    w_bar = grads[0] if grads[0] is not None else torch.zeros_like(w_T)
    result = _reverse(problem, state, w_bar, meta, needs)
    direct = per_meta(needs, grads[1:])  # terms of F that use meta without training
    meta_grads = [g if d is None else g + d for g, d in zip(result.meta_grads, direct)]
    init_grads = {n: t.clone() for n, t in layout.views(result.w0_grad).items()}
    return MetaGradient(value.detach(), spec.regroup(meta_grads), result.lr_grad, init_grads,
                        result.report, state.inner_losses, result.momentum_grad)
