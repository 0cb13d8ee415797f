"""The examples run, and their meta-gradients equal unrolled autograd's (float64)."""

import torch

import farzi_fast
from examples import digits_momentum_sgd, reweighting_adam, windowed_adam
from farzi_fast.engine import unrolled_meta_gradient

from .test_engine import rel


def test_windowed_adam_continues_the_warm_up_and_matches_unrolled_autograd():
    got, (data, model, optimizer, inner, outer) = windowed_adam.meta_gradient(
        30, 12, dtype=torch.float64)
    data.zero_grad()
    want = unrolled_meta_gradient(model, inner, outer, 12, meta=(data,), optimizer=optimizer)
    for name, grad in want.meta_grads[0].items():
        assert rel(got.meta_grads[0][name], grad) < 1e-9, name
    full, _ = windowed_adam.meta_gradient(30, 30, dtype=torch.float64)
    assert rel(full.meta_grads[0]["codes"], got.meta_grads[0]["codes"]) > 1e-3


def test_windowed_adam_runs_as_a_script(capsys):
    windowed_adam.main(["--steps", "20", "--window", "5"])
    assert "cosine(window 5, all 20 steps)" in capsys.readouterr().out


def test_digits_meta_step_matches_unrolled_autograd_in_images_and_per_step_lr():
    data = digits_momentum_sgd.digits(torch.float64)
    real = data["train"]
    synthetic = digits_momentum_sgd.SyntheticImages(*real, per_class=2)
    log_lr = torch.linspace(-3, -1.5, 6, dtype=torch.float64).requires_grad_()
    digits_momentum_sgd.meta_step(synthetic, log_lr, real, seed=3, batch=64)
    got_images, got_lr = synthetic.images.grad.clone(), log_lr.grad.clone()

    model, optimizer = digits_momentum_sgd.fresh_student(3, torch.float64)
    outer = digits_momentum_sgd.outer_loss(real, 3, batch=64)
    lr = log_lr.detach().exp().requires_grad_()
    want = unrolled_meta_gradient(model, digits_momentum_sgd.inner_loss, outer, 6,
                                  meta=(synthetic,), optimizer=optimizer, lr=lr)
    assert rel(got_images, want.meta_grads[0]["images"]) < 1e-9
    assert rel(got_lr, want.lr_grad * lr.detach()) < 1e-9  # d/dlog lr = lr d/dlr
    assert got_lr.abs().min() > 0  # every step's lr is learned


def test_digits_example_runs_as_a_script(capsys):
    digits_momentum_sgd.main(["--steps", "3", "--outer-steps", "2", "--per-class", "1"])
    out = capsys.readouterr().out
    for line in ("learned lr per step", "ConvNet: test accuracy", "MLP: test accuracy"):
        assert line in out


def test_reweighting_meta_gradient_matches_unrolled_autograd_and_finds_wrong_labels():
    inner, outer, model, optimizer, weights, flipped = reweighting_adam.problem(
        12, dtype=torch.float64)
    got = farzi_fast.meta_gradient(model, inner, outer, 12, meta=(weights,),
                                   optimizer=optimizer).meta_grads[0]
    want = unrolled_meta_gradient(model, inner, outer, 12, meta=(weights,),
                                  optimizer=optimizer).meta_grads[0]
    assert rel(got, want) < 1e-9
    seen = got != 0  # 12 batches of 100 of the 1,000 examples: every one, some twice
    assert seen.all()
    assert got[flipped].mean() > 0 > got[~flipped].mean()


def test_reweighting_example_runs_as_a_script(capsys):
    reweighting_adam.main(["--steps", "10"])
    assert "wrong labels among the" in capsys.readouterr().out
