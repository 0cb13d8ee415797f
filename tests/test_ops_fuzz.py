"""A short property-based fuzz: `adam_step` on the compiled CPU backend equals torch.optim's
Adam/AdamW over a few steps, for hyper-parameters and values hypothesis draws (float64, so
any difference beyond rounding is a bug, not noise)."""

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the [test] extra")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from farzi_fast import ops  # noqa: E402
from farzi_fast.ops import available_backends  # noqa: E402

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(n=st.integers(1, 70), steps=st.integers(1, 4), lr=st.floats(1e-5, 0.5),
       beta1=st.floats(0.0, 0.99), beta2=st.floats(0.0, 0.9999), eps=st.floats(1e-10, 1e-2),
       weight_decay=st.sampled_from([0.0, 1e-4, 0.1, 1.0]), data=st.data())
def test_adam_step_matches_torch_optim(n, steps, lr, beta1, beta2, eps, weight_decay, data):
    backend = "cpu" if "cpu" in available_backends() else "torch"
    w0 = torch.tensor(data.draw(st.lists(finite, min_size=n, max_size=n)), dtype=torch.float64)
    grads = [torch.tensor(data.draw(st.lists(finite, min_size=n, max_size=n)),
                          dtype=torch.float64) for _ in range(steps)]
    param = w0.clone().requires_grad_()
    optimizer = torch.optim.AdamW([param], lr=lr, betas=(beta1, beta2), eps=eps,
                                  weight_decay=weight_decay)
    w, m, v = w0.clone(), torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    for step, g in enumerate(grads, start=1):
        param.grad = g.clone()
        optimizer.step()
        ops.adam_step(w, g.clone(), m, v, step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                      weight_decay=weight_decay, backend=backend)
    # Rounding differs in the last bits (torch forms m with lerp, the kernels with two
    # products), so errors are bounded relative to the scale of what was summed: |g| for m,
    # g² for v, and the weights plus lr per step for w.
    g_scale = float(torch.stack(grads).abs().max())
    state = optimizer.state[param]
    assert torch.allclose(m, state["exp_avg"], rtol=1e-12, atol=1e-13 * g_scale)
    assert torch.allclose(v, state["exp_avg_sq"], rtol=1e-12, atol=1e-13 * g_scale ** 2)
    w_scale = float(w0.abs().max()) + steps * lr
    assert torch.allclose(w, param.detach(), rtol=1e-12, atol=1e-11 * w_scale)
