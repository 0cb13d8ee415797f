"""The inner optimizers a codebase builds (torch.optim.SGD, Adam, AdamW), given to the engine
as they are: forward equal to torch.optim training the model, meta-gradients equal to
unrolled autograd in float64 (meta tensors, initial parameters, lr, momentum), finite
differences on a tiny problem, a warmed-up optimizer's state continued, refusals by name."""

import copy

import pytest
import torch
from torch import nn

from farzi_fast.engine import meta_gradient, unroll, unrolled_meta_gradient

from .models import mlp, regression_problem
from .test_engine import assert_same_gradients, rel

SGD_VARIANTS = {
    "plain": dict(lr=0.1),
    "plain-l2": dict(lr=0.1, weight_decay=0.05),
    "heavy-ball": dict(lr=0.05, momentum=0.9),
    "dampening-l2": dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.1),
    "nesterov-l2": dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.05),
}
SGD_BACKENDS = ["torch", "cpu"]


def optimizers(model):
    """One of each optimizer kind the engine reverses, by name."""
    params = list(model.parameters())
    made = {f"sgd-{name}": torch.optim.SGD(params, **kw) for name, kw in SGD_VARIANTS.items()}
    made["adam-coupled-l2"] = torch.optim.Adam(params, lr=0.02, weight_decay=0.1)
    made["adamw"] = torch.optim.AdamW(params, lr=0.02, weight_decay=0.1)
    return made


def train_with_torch_optim(model, optimizer, loss_fn, steps, meta):
    """`steps` steps of the user's loop: optimizer.step() on the model itself."""
    names = [n for n, _ in model.named_parameters()]
    from torch.func import functional_call

    for t in range(1, steps + 1):
        optimizer.zero_grad()
        params = dict(model.named_parameters())
        loss_fn(lambda *a: functional_call(model, params, a), t, *meta).backward()
        optimizer.step()
    return {n: p.detach().clone() for n, p in zip(names, model.parameters())}


@pytest.mark.parametrize("kind", [f"sgd-{n}" for n in SGD_VARIANTS] + ["adam-coupled-l2"])
def test_forward_equals_torch_optim_training_the_model(kind):
    """unroll's trained parameters, and the unrolled reference's, are those the user's own
    optimizer gives the model: the reference's update rules are torch.optim's."""
    model = mlp()
    loss_fn, _, meta = regression_problem()
    meta = tuple(x.detach() for x in meta)
    engine = unroll(model, loss_fn, 12, meta=meta, optimizer=optimizers(model)[kind],
                    backend="torch")
    trained = copy.deepcopy(model)
    want = train_with_torch_optim(trained, optimizers(trained)[kind], loss_fn, 12, meta)
    for name, value in want.items():
        assert rel(engine[name].detach(), value) < 1e-13, name


@pytest.mark.parametrize("backend", SGD_BACKENDS)
@pytest.mark.parametrize("anchor_every", [25, 4], ids=["one-segment", "segments-of-4"])
@pytest.mark.parametrize("variant", list(SGD_VARIANTS))
def test_sgd_matches_unrolled_autograd_float64(variant, anchor_every, backend):
    model = mlp()
    loss_fn, outer_fn, meta = regression_problem()
    optimizer = optimizers(model)[f"sgd-{variant}"]
    want = unrolled_meta_gradient(model, loss_fn, outer_fn, 30, meta=meta, optimizer=optimizer)
    got = meta_gradient(model, loss_fn, outer_fn, 30, meta=meta, optimizer=optimizer,
                        anchor_every=anchor_every, backend=backend)
    assert_same_gradients(got, want, 1e-11)
    if optimizer.param_groups[0]["momentum"]:
        assert rel(got.momentum_grad, want.momentum_grad) < 1e-11
        assert want.momentum_grad.abs() > 0
    else:
        assert got.momentum_grad == 0


@pytest.mark.parametrize("anchor_every", [30, 7], ids=["pure-reversal", "anchors-every-7"])
def test_heavy_ball_is_inverted_with_anchors_like_adam(anchor_every):
    """Heavy-ball momentum is undone step by step (no replay): exact in float64 with no anchor
    but the start, and the report gives the drift each anchor corrected. Nesterov replays:
    nothing drifts, nothing to report."""
    model = mlp()
    loss_fn, outer_fn, meta = regression_problem()
    heavy_ball = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, dampening=0.1,
                                 weight_decay=0.01)
    want = unrolled_meta_gradient(model, loss_fn, outer_fn, 30, meta=meta, optimizer=heavy_ball)
    got = meta_gradient(model, loss_fn, outer_fn, 30, meta=meta, optimizer=heavy_ball,
                        anchor_every=anchor_every)
    assert_same_gradients(got, want, 1e-9)
    assert got.report.w0 < 1e-12
    assert sorted(got.report.anchors) == list(range(anchor_every, 30, anchor_every))
    assert all(0 < d["w"] < 1e-12 and d["b"] < 1e-9 for d in got.report.anchors.values())
    nesterov = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    replayed = meta_gradient(model, loss_fn, outer_fn, 30, meta=meta, optimizer=nesterov,
                             anchor_every=anchor_every)
    assert replayed.report.w0 == 0 and not replayed.report.anchors


@pytest.mark.parametrize("kind", ["sgd-dampening-l2", "sgd-nesterov-l2"])
def test_overlapped_sgd_reverse_pass_equals_the_sequential_one_bit_for_bit(monkeypatch, kind):
    """The halves of the reverse pass on two threads (as Adam's, for small steps) run the
    same kernels on the same values: one intra-op thread for both runs."""
    from farzi_fast.engine import sgd

    model = mlp()
    loss_fn, outer_fn, meta = regression_problem()
    results, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for flag in (False, True):
            monkeypatch.setattr(sgd, "overlaps", lambda problem, state, flag=flag: flag)
            results.append(meta_gradient(model, loss_fn, outer_fn, 30, meta=meta,
                                         optimizer=optimizers(model)[kind], anchor_every=7))
    finally:
        torch.set_num_threads(threads)
    sequential, overlapped = results
    assert torch.equal(sequential.meta_grads[0], overlapped.meta_grads[0])
    assert torch.equal(sequential.lr_grad, overlapped.lr_grad)
    assert torch.equal(sequential.momentum_grad, overlapped.momentum_grad)
    assert sequential.report == overlapped.report


def test_adam_coupled_l2_matches_unrolled_autograd_float64():
    model = mlp()
    loss_fn, outer_fn, meta = regression_problem()
    adam = torch.optim.Adam(model.parameters(), lr=0.05, weight_decay=0.1)
    want = unrolled_meta_gradient(model, loss_fn, outer_fn, 30, meta=meta, optimizer=adam)
    got = meta_gradient(model, loss_fn, outer_fn, 30, meta=meta, optimizer=adam)
    assert_same_gradients(got, want, 1e-9)
    without = unrolled_meta_gradient(model, loss_fn, outer_fn, 30, meta=meta, lr=0.05)
    assert rel(without.meta_grads[0], want.meta_grads[0]) > 1e-3  # the decay mattered


def test_sgd_gradients_match_finite_differences():
    """The reference itself, and the engine, against central differences in x, lr and
    momentum, on a tiny Nesterov problem with coupled L2."""
    model = mlp(sizes=(5, 4, 3))
    loss_fn, outer_fn, meta = regression_problem(batches=2, batch=3)
    x = meta[0]

    def objective(x_value, lr, momentum):
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                    nesterov=True, weight_decay=0.05)
        trained = unroll(model, loss_fn, 6, meta=(x_value, *meta[1:]), optimizer=optimizer,
                         backend="torch")
        return outer_fn(lambda *a: torch.func.functional_call(model, dict(trained), a)).item()

    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.7, nesterov=True,
                                weight_decay=0.05)
    got = meta_gradient(model, loss_fn, outer_fn, 6, meta=meta, optimizer=optimizer)
    h = 1e-6
    direction = torch.randn_like(x)
    fd = (objective(x + h * direction, 0.2, 0.7) - objective(x - h * direction, 0.2, 0.7)) / (2 * h)
    assert abs((got.meta_grads[0] * direction).sum().item() - fd) < 1e-7 * max(1, abs(fd))
    fd_lr = (objective(x, 0.2 + h, 0.7) - objective(x, 0.2 - h, 0.7)) / (2 * h)
    assert abs(got.lr_grad.item() - fd_lr) < 1e-7 * max(1, abs(fd_lr))
    fd_momentum = (objective(x, 0.2, 0.7 + h) - objective(x, 0.2, 0.7 - h)) / (2 * h)
    assert abs(got.momentum_grad.item() - fd_momentum) < 1e-7 * max(1, abs(fd_momentum))


@pytest.mark.parametrize("kind", ["sgd-dampening-l2", "sgd-nesterov-l2", "adam-coupled-l2",
                                  "adamw"])
def test_a_warmed_up_optimizer_is_continued_exactly(kind):
    """TD3's and RaT-BPTT's shape: plain steps of the user's optimizer without a graph, then a
    differentiated segment that continues the same optimizer state. The engine's segment
    equals the user's loop going on, and its gradient the unrolled reference's from that
    state; the optimizer and model are left as they were."""
    model = mlp()
    loss_fn, outer_fn, meta = regression_problem()
    detached = tuple(x.detach() for x in meta)
    optimizer = optimizers(model)[kind]
    train_with_torch_optim(model, optimizer, loss_fn, 5, detached)  # the warm-up
    model_before = copy.deepcopy(model.state_dict())
    optimizer_before = copy.deepcopy(optimizer.state_dict())

    got = meta_gradient(model, loss_fn, outer_fn, 20, meta=meta, optimizer=optimizer)
    want = unrolled_meta_gradient(model, loss_fn, outer_fn, 20, meta=meta, optimizer=optimizer)
    assert_same_gradients(got, want, 1e-9)
    fresh = unrolled_meta_gradient(model, loss_fn, outer_fn, 20, meta=meta,
                                   optimizer=optimizers(model)[kind])
    assert rel(fresh.meta_grads[0], want.meta_grads[0]) > 1e-4  # the state mattered

    engine = unroll(model, loss_fn, 7, meta=detached, optimizer=optimizer)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in model_before.items())
    assert _same_state(optimizer.state_dict(), optimizer_before)
    continued = train_with_torch_optim(model, optimizer, loss_fn, 7, detached)
    for name, value in continued.items():
        assert rel(engine[name].detach(), value) < 1e-12, name


def _same_state(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_a_learned_lr_beside_the_optimizer_gets_its_gradient():
    model = mlp()
    loss_fn, outer_fn, meta = regression_problem()
    sgd = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    trained = unroll(model, loss_fn, 15, meta=meta, optimizer=sgd, lr=lr)
    outer_fn(lambda *a: torch.func.functional_call(model, dict(trained), a)).backward()
    want = unrolled_meta_gradient(model, loss_fn, outer_fn, 15, meta=meta,
                                  optimizer=torch.optim.SGD(model.parameters(), lr=0.05,
                                                            momentum=0.9))
    assert rel(lr.grad, want.lr_grad) < 1e-11
    assert rel(meta[0].grad, want.meta_grads[0]) < 1e-11


def test_sgd_float32_is_as_accurate_as_float32_unrolled_autograd():
    """No reversal, so no drift: the float32 engine's error against the float64 truth is
    that of float32 unrolled autograd, at T = 200 with momentum."""
    kw = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)
    truth_model = mlp(dtype=torch.float32).double()
    loss64, outer64, meta64 = regression_problem(dtype=torch.float32, widen=True)
    truth = unrolled_meta_gradient(truth_model, loss64, outer64, 200, meta=meta64,
                                   optimizer=torch.optim.SGD(truth_model.parameters(), **kw))
    model = mlp(dtype=torch.float32)
    loss32, outer32, meta32 = regression_problem(dtype=torch.float32)
    sgd = torch.optim.SGD(model.parameters(), **kw)
    engine = meta_gradient(model, loss32, outer32, 200, meta=meta32, optimizer=sgd)
    unrolled = unrolled_meta_gradient(model, loss32, outer32, 200, meta=meta32, optimizer=sgd)
    error = rel(engine.meta_grads[0], truth.meta_grads[0])
    assert error <= 2 * rel(unrolled.meta_grads[0], truth.meta_grads[0]) + 1e-7, error


@pytest.mark.parametrize("make, message", [
    (lambda ps: torch.optim.RMSprop(ps), r"optimizer=RMSprop cannot be reversed: .*SGD, Adam "
                                         r"and AdamW"),
    (lambda ps: torch.optim.SGD(ps, lr=0.1, maximize=True), r"SGD\(maximize=True\)"),
    (lambda ps: torch.optim.Adam(ps, amsgrad=True), r"Adam\(amsgrad=True\) cannot be reversed"),
    (lambda ps: torch.optim.SGD([{"params": ps[:1]}, {"params": ps[1:], "momentum": 0.5}],
                                lr=0.1),
     "parameter groups with different hyperparameters"),
    (lambda ps: torch.optim.SGD(ps[:1], lr=0.1), "optimizes 1 tensors but the model has 2"),
])
def test_an_optimizer_the_engine_cannot_reverse_is_refused_by_name(make, message):
    model = nn.Linear(3, 2)
    optimizer = make(list(model.parameters()))
    with pytest.raises((TypeError, ValueError), match=message):
        unroll(model, lambda f, t: f(torch.ones(1, 3)).sum(), 2, optimizer=optimizer)


def test_keywords_beside_the_optimizer_and_compiling_sgd_are_refused():
    model = nn.Linear(3, 2)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = lambda f, t: f(torch.ones(1, 3)).sum()  # noqa: E731
    with pytest.raises(ValueError, match="by optimizer= or by keyword, not both .*lr"):
        unroll(model, loss, 2, optimizer=sgd, lr=0.5)
    with pytest.raises(ValueError, match="compile=True runs Adam and AdamW inner loops only"):
        unroll(model, loss, 2, optimizer=sgd, compile=True)


@pytest.mark.parametrize("kind", ["adam", "sgd-heavy-ball", "sgd-nesterov-l2"])
def test_one_learned_lr_per_step(kind):
    """lr as a tensor of T values (dataset distillation's learned step sizes): each step runs
    with its own, and the gradient has one value per step, equal to unrolled autograd's."""
    model = mlp()
    loss_fn, outer_fn, meta = regression_problem()
    steps = 12
    lrs = torch.linspace(0.01, 0.05, steps, dtype=torch.float64).requires_grad_()
    given = {} if kind == "adam" else dict(optimizer=optimizers(model)[kind])
    trained = unroll(model, loss_fn, steps, meta=meta, lr=lrs, **given)
    outer_fn(lambda *a: torch.func.functional_call(model, dict(trained), a)).backward()
    want = unrolled_meta_gradient(model, loss_fn, outer_fn, steps, meta=meta, lr=lrs, **given)
    assert lrs.grad.shape == (steps,) and rel(lrs.grad, want.lr_grad) < 1e-10
    assert rel(meta[0].grad, want.meta_grads[0]) < 1e-10
    got = meta_gradient(model, loss_fn, outer_fn, steps, meta=meta, lr=lrs.detach(), **given)
    assert rel(got.lr_grad, want.lr_grad) < 1e-10
    one = unrolled_meta_gradient(model, loss_fn, outer_fn, steps, meta=meta,
                                 lr=torch.tensor(0.03, dtype=torch.float64), **given)
    assert rel(one.meta_grads[0], want.meta_grads[0]) > 1e-3  # the schedule mattered
    with pytest.raises(ValueError, match="lr has 5 values, one per step, but steps=12"):
        unroll(model, loss_fn, steps, meta=meta, lr=lrs.detach()[:5], **given)


def test_compiled_steps_with_coupled_l2_and_a_warm_start_match_unrolled_autograd():
    """compile=True with torch.optim.Adam(weight_decay=) (TD3's optimizer), continued after
    plain steps: the compiled reverse step's Hessian-vector product carries the decay's term."""
    model = mlp()
    loss_fn, outer_fn, meta = regression_problem()
    adam = torch.optim.Adam(model.parameters(), lr=0.05, eps=1e-4, weight_decay=0.3)
    for t in range(3):  # the warm-up
        adam.zero_grad()
        loss_fn(model, t, *(x.detach() for x in meta)).backward()
        adam.step()
    got = meta_gradient(model, loss_fn, outer_fn, 9, meta=meta, optimizer=adam, compile=True)
    want = unrolled_meta_gradient(model, loss_fn, outer_fn, 9, meta=meta, optimizer=adam)
    for a, b in zip(got.meta_grads, want.meta_grads):
        assert rel(a, b) < 1e-9
    eager = meta_gradient(model, loss_fn, outer_fn, 9, meta=meta, optimizer=adam)
    assert rel(eager.meta_grads[0], want.meta_grads[0]) < 1e-9
