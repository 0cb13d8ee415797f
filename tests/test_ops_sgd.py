"""The SGD ops (sgd_step, sgd_reverse): every backend against the `torch` reference on fresh
random inputs at odd sizes with outputs poisoned, the reference against torch.optim.SGD and
against autograd's vector-Jacobian products, and refused input."""

import pytest
import torch

from farzi_fast import ops

from .test_ops import fresh, max_error, sizes_for

VARIANTS = {
    "plain": dict(lr=3e-2),
    "plain-l2": dict(lr=3e-2, weight_decay=0.1),
    "heavy-ball": dict(lr=3e-2, momentum=0.9),
    "dampening-l2": dict(lr=3e-2, momentum=0.9, dampening=0.3, weight_decay=0.1),
    "nesterov-l2": dict(lr=3e-2, momentum=0.8, nesterov=True, weight_decay=0.05),
}


def make_state(n, dtype, device, offset, seed, momentum):
    gen = torch.Generator().manual_seed(seed)
    names = ["w", "g", "w_bar", "hvp"] + (["b", "b_bar"] if momentum else [])
    state = {name: fresh(n, dtype, device, offset, gen) for name in names}
    if not momentum:
        state.update(b=None, b_bar=None)
    return state


def run_ops(state, backend, kw, step, with_hvp=True):
    """sgd_step on a copy of (w, b), then sgd_reverse on the state; returns the outputs."""
    s = state
    w_next = s["w"].clone()
    b_next = None if s["b"] is None else s["b"].clone()
    ops.sgd_step(w_next, s["g"], b_next, step=step, backend=backend, **kw)
    g_bar = torch.full_like(s["w"], float("nan"))  # poisoned: an unwritten element fails
    lr_grad, momentum_grad = ops.sgd_reverse(
        s["w"], s["g"], s["b"], s["w_bar"], s["b_bar"], g_bar,
        s["hvp"] if with_hvp else None, step=step, backend=backend, **kw)
    named = dict(w_next=w_next, b_next=b_next, w_bar=s["w_bar"], b_bar=s["b_bar"],
                 g_bar=g_bar, lr_grad=lr_grad.reshape(1), momentum_grad=momentum_grad.reshape(1))
    return {k: t.detach().cpu().double() for k, t in named.items() if t is not None}


def clone(state, dtype=None, device=None):
    return {k: None if t is None else t.to(dtype=dtype or t.dtype, device=device or t.device,
                                          copy=True) for k, t in state.items()}


@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_backend_matches_reference_float64(backend_device, variant, offset):
    """Across the sizes, torch's first momentum step and a later one take turns, and so do
    the reverse with and without the next step's Hessian-vector product."""
    backend, device = backend_device
    kw = VARIANTS[variant]
    for i, n in enumerate(sizes_for(backend, device)):
        step, with_hvp = (1, 4)[i % 2], i // 2 % 2 == 0
        state = make_state(n, torch.float64, device, offset, 3000 + i, kw.get("momentum"))
        ref = clone(state, device=torch.device("cpu"))
        got = run_ops(state, backend, kw, step, with_hvp=with_hvp)
        want = run_ops(ref, "torch", kw, step, with_hvp=with_hvp)
        assert got.keys() == want.keys()
        for name in want:
            scale = want[name].abs().max().item() + 1e-300
            assert max_error(got[name], want[name]) <= 1e-12 * scale, (name, n)


@pytest.mark.parametrize("variant", ["plain-l2", "nesterov-l2"])
def test_backend_float32_error_bounded_by_reference_error(backend_device, variant):
    backend, device = backend_device
    kw = VARIANTS[variant]
    for i, n in enumerate(sizes_for(backend, device)):
        state64 = make_state(n, torch.float64, torch.device("cpu"), 0, 4000 + i,
                             kw.get("momentum"))
        truth = run_ops(clone(state64), "torch", kw, 3)
        ref_out = run_ops(clone(state64, dtype=torch.float32), "torch", kw, 3)
        got = run_ops(clone(state64, dtype=torch.float32, device=device), backend, kw, 3)
        for name in truth:
            scale = truth[name].abs().max().item()
            ref_err = max_error(ref_out[name], truth[name])
            assert max_error(got[name], truth[name]) <= 2 * ref_err + 1e-6 * scale, (name, n)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_reference_step_is_torch_optim_sgd_float64(variant):
    kw = VARIANTS[variant]
    gen = torch.Generator().manual_seed(5)
    param = torch.nn.Parameter(torch.randn(37, dtype=torch.float64, generator=gen))
    optimizer = torch.optim.SGD([param], **kw)
    w = param.detach().clone()
    b = torch.zeros_like(w) if kw.get("momentum") else None
    for step in range(1, 5):
        g = torch.randn(37, dtype=torch.float64, generator=gen)
        param.grad = g.clone()
        optimizer.step()
        ops.sgd_step(w, g, b, step=step, backend="torch", **kw)
        # torch's add(alpha=) may fuse the multiply-add: equal to rounding, not bit for bit
        assert torch.allclose(w, param.detach(), rtol=1e-15, atol=1e-15), step


@pytest.mark.parametrize("step", [1, 4], ids=["first", "later"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_reverse_adjoints_are_autograd_vjps_float64(variant, step):
    """sgd_reverse's outputs are the vector-Jacobian products of sgd_step's map
    (w, g, b, lr, momentum) -> (w_t, b_t) with the adjoints (w_bar + hvp, b_bar)."""
    kw = VARIANTS[variant]
    momentum = kw.get("momentum", 0.0)
    gen = torch.Generator().manual_seed(7)
    n = 11
    w, g, b, w_bar, b_bar, hvp = (torch.randn(n, dtype=torch.float64, generator=gen)
                                  for _ in range(6))
    leaves = [x.clone().requires_grad_() for x in (w, g, b)]
    lr = torch.tensor(kw["lr"], dtype=torch.float64, requires_grad=True)
    mu = torch.tensor(momentum, dtype=torch.float64, requires_grad=True)
    wl, gl, bl = leaves
    g_hat = gl + kw.get("weight_decay", 0.0) * wl
    if momentum:
        b_new = g_hat if step == 1 else mu * bl + (1 - kw.get("dampening", 0.0)) * g_hat
        d = g_hat + mu * b_new if kw.get("nesterov") else b_new
    else:
        b_new, d = g_hat, g_hat
    w_new = wl - lr * d
    outputs = [w_new] + ([b_new] if momentum else [])
    cotangents = [w_bar + hvp] + ([b_bar] if momentum else [])
    want = torch.autograd.grad(outputs, [wl, gl, bl, lr, mu], cotangents, allow_unused=True)
    b_arg = b.clone() if momentum else None
    b_bar_arg = b_bar.clone() if momentum else None
    w_bar_arg, g_bar = w_bar.clone(), torch.full_like(w, float("nan"))
    lr_grad, momentum_grad = ops.sgd_reverse(w, g, b_arg, w_bar_arg, b_bar_arg, g_bar, hvp,
                                             step=step, backend="torch", **kw)
    # w_bar leaves out the Hessian-vector product the engine adds: dw_t/dg = -lr I is exact.
    assert torch.allclose(w_bar_arg, want[0], atol=1e-13)
    assert torch.allclose(g_bar, want[1], atol=1e-13)
    if momentum:
        want_b = want[2] if want[2] is not None else torch.zeros(n, dtype=torch.float64)
        assert torch.allclose(b_bar_arg, want_b, atol=1e-13)
        want_mu = want[4] if want[4] is not None else torch.zeros((), dtype=torch.float64)
        assert torch.allclose(momentum_grad, want_mu, atol=1e-12)
    assert torch.allclose(lr_grad, want[3], atol=1e-12)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(lr=-1.0), ValueError, "lr must be >= 0"),
    (dict(lr=0.1, momentum=-0.5), ValueError, "momentum must be >= 0"),
    (dict(lr=0.1, nesterov=True), ValueError, "nesterov=True needs momentum > 0"),
    (dict(lr=0.1, momentum=0.9, nesterov=True, dampening=0.1), ValueError,
     "nesterov=True needs momentum > 0 and dampening = 0"),
    (dict(lr=0.1, nesterov=1), TypeError, "nesterov must be True or False"),
    (dict(lr=float("nan")), ValueError, "lr must be finite"),
])
def test_bad_hyperparameters_are_refused_and_nothing_changes(kwargs, error, match):
    w, g = torch.randn(5), torch.randn(5)
    before = w.clone()
    with pytest.raises(error, match=match):
        ops.sgd_step(w, g, None, step=1, **kwargs)
    assert torch.equal(w, before)


def test_the_buffer_is_required_exactly_with_momentum():
    w, g, b = torch.randn(5), torch.randn(5), torch.randn(5)
    with pytest.raises(ValueError, match="b is required when momentum > 0"):
        ops.sgd_step(w, g, None, step=1, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="b must be None when momentum == 0"):
        ops.sgd_step(w, g, b, step=1, lr=0.1)
    with pytest.raises(ValueError, match="b_bar is required"):
        ops.sgd_reverse(w, g, b, w.clone(), None, torch.empty(5), step=2, lr=0.1, momentum=0.9)
