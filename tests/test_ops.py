"""The fused ops: every backend against the `torch` reference, the reference against
torch.optim and autograd, forward/reverse round trips, and refused input."""

import os
import shutil

import pytest
import torch

from farzi_fast import ops
from farzi_fast.ops.dispatch import triton_interpreting

SIZES = [1, 7, 1025, 4099, 65539]
HYPER = dict(lr=3e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1)


def sizes_for(backend, device):
    # The interpreter runs Triton programs one by one in numpy: keep it to small sizes.
    if backend == "triton" and device.type == "cpu":
        return [n for n in SIZES if n <= 4099]
    return SIZES


def fresh(n, dtype, device, offset, generator):
    """A random contiguous buffer of n elements starting `offset` elements into its storage
    (offset 1 makes the pointer unaligned for 16-byte vector loads)."""
    storage = torch.randn(n + offset, dtype=torch.float64, generator=generator)
    return storage.to(device=device, dtype=dtype)[offset:]


def make_state(n, dtype, device, offset, seed):
    """Random (w, g, m, v, w_bar, m_bar, v_bar, hvp) in the range Adam produces; v > 0 except
    for a few exact zeros (parameters whose gradient was always zero)."""
    gen = torch.Generator().manual_seed(seed)
    w, g, m, w_bar, m_bar, v_bar, hvp = (fresh(n, dtype, device, offset, gen) for _ in range(7))
    v = fresh(n, dtype, device, offset, gen).square_() * 0.1
    if n > 3:
        v[::7] = 0.0
        m[::7] = 0.0
    return dict(w=w, g=g, m=m, v=v, w_bar=w_bar, m_bar=m_bar, v_bar=v_bar, hvp=hvp)


def clone_state(state, dtype=None, device=None):
    return {k: t.to(dtype=dtype or t.dtype, device=device or t.device, copy=True)
            for k, t in state.items()}


def run_all_ops(state, backend, step=5, with_hvp=True):
    """adam_step, then the two reverse halves, on `state` in place; returns (g_bar, lr_grad)."""
    s = state
    ops.adam_step(s["w"], s["g"], s["m"], s["v"], step=step, backend=backend, **HYPER)
    lr_grad = ops.adam_reverse_params(s["w"], s["m"], s["v"], s["w_bar"], s["m_bar"],
                                      s["v_bar"], s["hvp"] if with_hvp else None, step=step,
                                      backend=backend, **HYPER)
    g_bar = torch.full_like(s["w"], float("nan"))  # poisoned: an unwritten element fails
    ops.adam_reverse_moments(s["m"], s["v"], s["g"], s["m_bar"], s["v_bar"], g_bar,
                             beta1=HYPER["beta1"], beta2=HYPER["beta2"], backend=backend)
    return g_bar, lr_grad


def outputs(state, g_bar, lr_grad):
    named = {k: state[k] for k in ("w", "m", "v", "w_bar", "m_bar", "v_bar")}
    named["g_bar"] = g_bar
    named["lr_grad"] = lr_grad.reshape(1)
    return {k: t.detach().cpu().double() for k, t in named.items()}


def max_error(a, b):
    assert torch.isfinite(a).all(), "non-finite output (unwritten element or NaN)"
    return (a - b).abs().max().item()


@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("with_hvp", [True, False], ids=["hvp", "no-hvp"])
def test_backend_matches_reference_float64(backend_device, offset, with_hvp):
    backend, device = backend_device
    for i, n in enumerate(sizes_for(backend, device)):
        state = make_state(n, torch.float64, device, offset, seed=1000 + i)
        ref = clone_state(state, device=torch.device("cpu"))
        got = outputs(state, *run_all_ops(state, backend, with_hvp=with_hvp))
        want = outputs(ref, *run_all_ops(ref, "torch", with_hvp=with_hvp))
        for name in want:
            scale = want[name].abs().max().item() + 1e-300
            assert max_error(got[name], want[name]) <= 1e-12 * scale, (name, n)


def test_backend_float32_error_bounded_by_reference_error(backend_device):
    """In float32 a backend may round differently from the torch reference, but its error
    against the float64 truth must stay within twice the reference's own float32 error."""
    backend, device = backend_device
    for i, n in enumerate(sizes_for(backend, device)):
        state64 = make_state(n, torch.float64, torch.device("cpu"), 0, seed=2000 + i)
        truth = outputs(state64, *run_all_ops(clone_state(state64), "torch"))
        ref32 = clone_state(state64, dtype=torch.float32)
        ref_out = outputs(ref32, *run_all_ops(ref32, "torch"))
        mine = clone_state(state64, dtype=torch.float32, device=device)
        got = outputs(mine, *run_all_ops(mine, backend))
        for name in truth:
            scale = truth[name].abs().max().item()
            ref_err = max_error(ref_out[name], truth[name])
            assert max_error(got[name], truth[name]) <= 2 * ref_err + 1e-6 * scale, (name, n)


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_trajectory_matches_torch_optim(backend_device, weight_decay):
    """50 steps of adam_step equal torch.optim.Adam / AdamW to 1e-6 relative (float32)."""
    backend, device = backend_device
    n = 4099
    gen = torch.Generator().manual_seed(7)
    w0 = torch.randn(n, generator=gen)
    grads = [torch.randn(n, generator=gen) * (1 + t % 3) for t in range(50)]
    param = torch.nn.Parameter(w0.clone())
    optim_cls = torch.optim.AdamW if weight_decay else torch.optim.Adam
    optimizer = optim_cls([param], lr=1e-2, betas=(0.9, 0.99), eps=1e-8,
                          weight_decay=weight_decay)
    w, m, v = w0.to(device), torch.zeros(n, device=device), torch.zeros(n, device=device)
    for t, grad in enumerate(grads, start=1):
        param.grad = grad.clone()
        optimizer.step()
        ops.adam_step(w, grad.to(device), m, v, step=t, lr=1e-2, beta1=0.9, beta2=0.99,
                      eps=1e-8, weight_decay=weight_decay, backend=backend)
        rel = (w.cpu() - param.detach()).norm() / param.detach().norm()
        assert rel <= 1e-6, (t, rel.item())
    state = optimizer.state[param]
    for mine, theirs in ((m, state["exp_avg"]), (v, state["exp_avg_sq"])):
        assert ((mine.cpu() - theirs).norm() / theirs.norm()).item() <= 1e-6


def test_torch_reference_matches_torch_optim_float64():
    n, gen = 1025, torch.Generator().manual_seed(3)
    w0 = torch.randn(n, generator=gen, dtype=torch.float64)
    param = torch.nn.Parameter(w0.clone())
    optimizer = torch.optim.AdamW([param], lr=1e-2, weight_decay=0.1)
    w, m, v = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
    for t in range(1, 51):
        grad = torch.randn(n, generator=gen, dtype=torch.float64)
        param.grad = grad
        optimizer.step()
        ops.adam_step(w, grad, m, v, step=t, lr=1e-2, weight_decay=0.1, backend="torch")
    assert ((w - param.detach()).norm() / param.detach().norm()).item() <= 1e-13


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_forward_then_reverse_restores_state_float64(backend):
    if backend not in ops.available_backends():
        pytest.skip(f"backend {backend!r} not available here")
    device = torch.device("cuda" if backend == "triton" and not triton_interpreting() else "cpu")
    n, steps, start = 4099, 20, 30  # resume mid-training: m, v nonzero at the start
    gen = torch.Generator().manual_seed(11)
    w = torch.randn(n, generator=gen, dtype=torch.float64).to(device)
    m = (0.1 * torch.randn(n, generator=gen, dtype=torch.float64)).to(device)
    v = (0.01 * torch.rand(n, generator=gen, dtype=torch.float64)).to(device)
    grads = [torch.randn(n, generator=gen, dtype=torch.float64).to(device) for _ in range(steps)]
    w0, m0, v0 = w.clone(), m.clone(), v.clone()
    for t, g in enumerate(grads, start=start + 1):
        ops.adam_step(w, g, m, v, step=t, backend=backend, **HYPER)
    zeros = [torch.zeros_like(w) for _ in range(4)]
    w_bar, m_bar, v_bar, g_bar = zeros
    for t, g in reversed(list(enumerate(grads, start=start + 1))):
        ops.adam_reverse_params(w, m, v, w_bar, m_bar, v_bar, step=t, backend=backend, **HYPER)
        ops.adam_reverse_moments(m, v, g, m_bar, v_bar, g_bar, beta1=HYPER["beta1"],
                                 beta2=HYPER["beta2"], backend=backend)
    for got, want in ((w, w0), (m, m0), (v, v0)):
        assert ((got - want).norm() / want.norm()).item() <= 1e-12


def _adam_step_autograd(w, m, v, g, lr, hyper, step):
    """One differentiable Adam step written with autograd ops (independent of the kernels)."""
    b1, b2 = hyper["beta1"], hyper["beta2"]
    m_t = b1 * m + (1 - b1) * g
    v_t = b2 * v + (1 - b2) * g * g
    d = torch.sqrt(v_t / (1 - b2 ** step)) + hyper["eps"]
    w_t = w * (1 - lr * hyper["weight_decay"]) - lr * (m_t / (1 - b1 ** step)) / d
    return w_t, m_t, v_t


def test_reverse_adjoints_match_autograd_vjp_float64():
    """The reverse step's adjoint updates are the vector-Jacobian product of one Adam step."""
    n, step = 257, 4
    gen = torch.Generator().manual_seed(5)
    rnd = lambda: torch.randn(n, generator=gen, dtype=torch.float64)  # noqa: E731
    w, g, m = rnd(), rnd(), 0.1 * rnd()
    v = 0.01 * rnd().abs()
    lr = torch.tensor(HYPER["lr"], dtype=torch.float64)
    inputs = [x.clone().requires_grad_() for x in (w, m, v, g, lr)]
    w_t, m_t, v_t = _adam_step_autograd(*inputs, HYPER, step)
    adj_w, adj_m, adj_v = rnd(), rnd(), rnd()
    want = torch.autograd.grad((w_t, m_t, v_t), inputs, (adj_w, adj_m, adj_v))

    state_w, state_m, state_v = (x.detach().clone() for x in (w_t, m_t, v_t))
    w_bar, m_bar, v_bar = adj_w.clone(), adj_m.clone(), adj_v.clone()
    lr_grad = ops.adam_reverse_params(state_w, state_m, state_v, w_bar, m_bar, v_bar,
                                      step=step, backend="torch", **HYPER)
    g_bar = torch.empty_like(w)
    ops.adam_reverse_moments(state_m, state_v, g, m_bar, v_bar, g_bar, beta1=HYPER["beta1"],
                             beta2=HYPER["beta2"], backend="torch")
    got = (w_bar, HYPER["beta1"] * m_bar, HYPER["beta2"] * v_bar, g_bar, lr_grad)
    for name, a, b in zip(("w", "m", "v", "g", "lr"), got, want):
        assert torch.allclose(a, b, rtol=1e-11, atol=1e-12), name
    assert torch.allclose(state_w, w, rtol=1e-13, atol=1e-14)


def test_compiled_backends_were_built():
    """A failed C++/CUDA build must fail CI, not silently skip every compiled-backend test."""
    if os.environ.get("FARZI_FAST_NO_EXTENSIONS"):
        pytest.skip("built with FARZI_FAST_NO_EXTENSIONS=1")
    assert "cpu" in ops.available_backends()
    if not os.environ.get("FARZI_FAST_NO_EMULATION"):
        import farzi_fast._C_cuda_emu  # noqa: F401  (the CUDA kernels emulated on the host)
    if shutil.which("nvcc") and not os.environ.get("FARZI_FAST_NO_CUDA"):
        import farzi_fast._C_cuda  # noqa: F401  (imports without a GPU: cudart is static)


# --- refused input: a clear error naming the argument, and nothing modified -------------

def _buffers(n=9, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    return [torch.rand(n, generator=gen, dtype=dtype) + 0.1 for _ in range(7)]


BAD_CALLS = [
    ("lr", dict(lr=-1.0), ValueError),
    ("lr", dict(lr=float("nan")), ValueError),
    ("lr", dict(lr="0.1"), TypeError),
    ("beta1", dict(beta1=1.0), ValueError),
    ("beta2", dict(beta2=-0.1), ValueError),
    ("eps", dict(eps=-1e-8), ValueError),
    ("weight_decay", dict(weight_decay=-0.1), ValueError),
    ("step", dict(step=0), ValueError),
    ("step", dict(step=1.5), TypeError),
    ("backend", dict(backend="tpu"), ValueError),
]


@pytest.mark.parametrize("argument,override,error", BAD_CALLS)
def test_bad_scalars_are_refused_and_nothing_changes(argument, override, error):
    w, g, m, v, *_ = _buffers()
    before = [t.clone() for t in (w, g, m, v)]
    kwargs = dict(step=1, lr=0.1) | override
    with pytest.raises(error, match=argument):
        ops.adam_step(w, g, m, v, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip((w, g, m, v), before))


def test_reverse_needs_positive_betas_and_invertible_decay():
    w, m, v, wb, mb, vb, gb = _buffers()
    before = [t.clone() for t in (w, m, v, wb, mb, vb, gb)]
    with pytest.raises(ValueError, match="beta1"):
        ops.adam_reverse_params(w, m, v, wb, mb, vb, step=1, lr=0.1, beta1=0.0)
    with pytest.raises(ValueError, match="lr \\* weight_decay"):
        ops.adam_reverse_params(w, m, v, wb, mb, vb, step=1, lr=1.0, weight_decay=1.0)
    with pytest.raises(ValueError, match="beta2"):
        ops.adam_reverse_moments(m, v, w, mb, vb, gb, beta2=0.0)
    assert all(torch.equal(a, b) for a, b in zip((w, m, v, wb, mb, vb, gb), before))


@pytest.mark.parametrize("case", ["non-contiguous", "shape", "dtype", "int-dtype",
                                  "not-a-tensor", "overlap", "requires-grad"])
def test_bad_buffers_are_refused_and_nothing_changes(case):
    w, g, m, v, *_ = _buffers(16)
    if case == "non-contiguous":
        m, expected, error = torch.rand(32)[::2], "m must be contiguous", ValueError
    elif case == "shape":
        v, expected, error = torch.rand(15), "v has shape", ValueError
    elif case == "dtype":
        g, expected, error = torch.rand(16, dtype=torch.float64), "g has dtype", TypeError
    elif case == "int-dtype":
        w, expected, error = torch.ones(16, dtype=torch.int32), "w must be float32 or float64", TypeError
    elif case == "not-a-tensor":
        g, expected, error = [0.0] * 16, "g must be a torch.Tensor", TypeError
    elif case == "overlap":
        buf = torch.rand(24)
        w, m, expected, error = buf[:16], buf[8:], "w and m overlap", ValueError
    else:
        w, expected, error = torch.rand(16, requires_grad=True), "w requires grad", ValueError
    tensors = [t for t in (w, g, m, v) if isinstance(t, torch.Tensor)]
    before = [t.detach().clone() for t in tensors]
    with pytest.raises(error, match=expected):
        ops.adam_step(w, g, m, v, step=1, lr=0.1)
    assert all(torch.equal(a.detach(), b) for a, b in zip(tensors, before))


def test_unavailable_backend_names_the_alternatives():
    w, g, m, v, *_ = _buffers()
    if "cuda" in ops.available_backends():
        pytest.skip("cuda is available here")
    with pytest.raises(ValueError, match="not available here"):
        ops.adam_step(w, g, m, v, step=1, lr=0.1, backend="cuda")


def test_cpu_backend_refuses_gpu_tensors_and_vice_versa():
    w, g, m, v, *_ = _buffers()
    if "cpu" not in ops.available_backends():
        pytest.skip("cpu backend not built")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs tensors on cpu"):
            ops.adam_step(*(t.cuda() for t in (w, g, m, v)), step=1, lr=0.1, backend="cpu")
    else:
        pytest.skip("needs a GPU to make device tensors")


def test_empty_buffers_are_a_no_op():
    e = [torch.empty(0) for _ in range(7)]
    ops.adam_step(*e[:4], step=1, lr=0.1)
    assert ops.adam_reverse_params(*e[:6], step=1, lr=0.1).item() == 0.0


def test_auto_picks_the_compiled_cpu_backend():
    from farzi_fast.ops.dispatch import resolve

    expected = "cpu" if "cpu" in ops.available_backends() else "torch"
    assert resolve("auto", torch.device("cpu")).__name__.endswith(f".{expected}_backend")
