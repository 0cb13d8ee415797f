"""The examples run, and their meta-gradients equal unrolled autograd's (float64)."""

import torch

from examples import windowed_adam
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
