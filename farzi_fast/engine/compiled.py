"""The engine's per-step computations as torch.compile'd pure functions
(`unroll(..., compile=True)`).

The eager reverse pass recomputes g_t with create_graph=True and later differentiates that
graph again, op by op: torch.compile cannot compile a double backward. Written with torch.func
instead, a step is a pure function of tensors, which Inductor compiles into fused kernels
with no autograd graph at all: the forward step's gradient, and one reverse step that gives
g_t (to reverse m and v), forms g_bar from it by the torch backend's adam_reverse_moments (the
spec the fused kernels follow) and returns both products along g_bar, so g_t is computed
once. Unrolled autograd cannot do this: it needs every step's graph alive at once.

Compiled code is kept per model and kind of problem (`_compiled`), so a fresh loss_fn closure
of the same code (distill's inner loss, one per inner loop) reuses it. Random ops fall back to
the eager ones (`fallback_random`), so dropout draws the masks the generator state gives,
exactly as the eager engine's forward and reverse passes do.
"""

from __future__ import annotations

import itertools
import types
import weakref

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


def _reverse_step(functional, loss_fn, w, t, meta, needs, m_bar, v_bar, hyper, coupled_l2):
    """At w = w_{t-1}, with (m_bar, v_bar) the adjoints of m_t and v_t: (g_t, then the
    vector-Jacobian products of w -> g_t(w, meta) with g_bar: H g_bar, and
    (dg_t/dmeta[i])^T g_bar for each i where needs[i]). g_t includes torch.optim.Adam's
    coupled L2 (`coupled_l2` w), so H includes its `coupled_l2` I."""
    wanted = [i for i, need in enumerate(needs) if need]

    def gradient(w, *wanted_meta):
        full = list(meta)
        for i, x in zip(wanted, wanted_meta):
            full[i] = x
        g = torch.func.grad(_loss(functional, loss_fn, t, full))(w)
        return g + coupled_l2 * w if coupled_l2 else g

    g, pull = torch.func.vjp(gradient, w, *(meta[i] for i in wanted))
    g_bar = torch.empty_like(g)
    unused = [torch.zeros_like(g), torch.zeros_like(g)]  # m, v reversed here are dropped
    torch_backend.adam_reverse_moments(*unused, g, m_bar, v_bar, g_bar, hyper)
    return (g, *pull(g_bar))


# One pair of compiled functions per model and problem, each a copy under a name of its own:
# Dynamo keeps its cache per code object and its record of which sizes changed between calls
# per file, line and name, and retraces with symbolic sizes after a change. With one shared
# pair, a second model in the process (other sizes, other int attributes) made Dynamo retrace
# with symbolic sizes, and dropout under torch.func then failed to trace ("Cannot call
# numel() on tensor with symbolic sizes", seen in the test suite). Per problem, only the step
# number t changes from call to call, and Dynamo lets it turn dynamic after one recompile.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {key: pair}
_copies = itertools.count()


def _own_copy(fn):
    """fn with a code object of its own, under a name of its own: Dynamo's record of changed
    sizes is keyed by file, line and name."""
    name = f"{fn.__name__}_{next(_copies)}"
    return types.FunctionType(fn.__code__.replace(co_name=name), fn.__globals__, name,
                              fn.__defaults__, fn.__closure__)


def _compiled(functional, loss_fn, w, meta):
    """The pair for this model and problem; distill's inner loops (a fresh loss_fn closure of
    one code, the same student and shapes) all share one."""
    key = (getattr(loss_fn, "__code__", type(loss_fn)), functional.layout.shapes, w.dtype,
           w.device, tuple((tuple(x.shape), x.dtype) for x in meta))
    pairs = _COMPILED.setdefault(functional.model, {})
    if key not in pairs:
        pairs[key] = (torch.compile(_own_copy(_gradient_and_loss), options=_OPTIONS),
                      torch.compile(_own_copy(_reverse_step), options=_OPTIONS))
    return pairs[key]


def gradient_and_loss(functional, loss_fn, w, t, meta):
    return _compiled(functional, loss_fn, w, meta)[0](functional, loss_fn, w, t, meta)


def reverse_step(functional, loss_fn, w, t, meta, needs, m_bar, v_bar, hyper, coupled_l2):
    return _compiled(functional, loss_fn, w, meta)[1](functional, loss_fn, w, t, meta, needs,
                                                       m_bar, v_bar, hyper, coupled_l2)
