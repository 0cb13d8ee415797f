"""The libraries a user with memory to spare would pick, as baselines beside unrolled
autograd: TorchOpt's differentiable Adam and SGD (MetaAdam, MetaSGD) and `higher`'s
differentiable copies of the user's SGD or Adam. Optional: absent when not installed
(`pip install torchopt higher`; neither is a dependency of the package)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch

try:
    import torchopt
except ImportError:  # the benchmarks then leave TorchOpt's rows out
    torchopt = None
try:
    import higher
except ImportError:  # ...and higher's
    higher = None

TORCHOPT = "TorchOpt"
HIGHER = "higher"


def _result(value, meta, grads) -> SimpleNamespace:
    """.value and .meta_grads (None where a meta tensor does not require grad)."""
    grads = iter(grads)
    return SimpleNamespace(value=value.detach(),
                           meta_grads=tuple(next(grads) if x.requires_grad else None
                                            for x in meta))


def higher_meta_gradient(model, loss_fn, outer_fn, steps, *, meta=(), optimizer):
    """dF/dmeta through `steps` steps of higher's differentiable copy of `optimizer` (an SGD
    or Adam over `model`'s parameters; higher's Adam places eps differently from torch's, so
    its gradients differ, its cost does not) on a functional copy of `model`."""
    wanted = [x for x in meta if x.requires_grad]
    with torch.enable_grad(), higher.innerloop_ctx(model, optimizer,
                                                   copy_initial_weights=True) as (net, diffopt):
        for t in range(1, steps + 1):
            diffopt.step(loss_fn(net, t, *meta))
        value = outer_fn(net)
        return _result(value, meta, torch.autograd.grad(value, wanted, allow_unused=True))


def torchopt_meta_gradient(model, loss_fn, outer_fn, steps, *, meta=(), optimizer):
    """dF/dmeta through `steps` steps of TorchOpt's MetaAdam or MetaSGD, built with the
    hyperparameters of `optimizer` (a torch.optim.Adam or SGD), on a copy of `model` (same
    contract as the engine's loss_fn(f, t, *meta) / outer_fn(f)); returns .value and
    .meta_grads."""
    net = copy.deepcopy(model)
    optimizer = _torchopt_twin(net, optimizer)
    wanted = [x for x in meta if x.requires_grad]
    with torch.enable_grad():
        for t in range(1, steps + 1):
            optimizer.step(loss_fn(net, t, *meta))
        value = outer_fn(net)
        return _result(value, meta, torch.autograd.grad(value, wanted, allow_unused=True))


def _torchopt_twin(net, optimizer):
    """TorchOpt's differentiable optimizer with the same hyperparameters as `optimizer`."""
    h = optimizer.param_groups[0]
    if isinstance(optimizer, torch.optim.SGD):
        return torchopt.MetaSGD(net, lr=h["lr"], momentum=h["momentum"],
                                dampening=h["dampening"], nesterov=h["nesterov"],
                                weight_decay=h["weight_decay"])
    return torchopt.MetaAdam(net, lr=h["lr"], betas=h["betas"], eps=h["eps"],
                             weight_decay=h["weight_decay"])
