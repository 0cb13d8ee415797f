"""Meta-parameters kept in an nn.Module the inner loss closes over (a distilled-data module
with a `get_batch(t)`, as TD3 keeps its synthetic sequences): gradients equal to the loose
tensor form's, landing in the module's `.grad`; without `meta=` such a module is refused."""

import pytest
import torch
from torch import nn

from farzi_fast.engine import meta_gradient, unroll, unrolled_meta_gradient

from .models import mlp
from .test_engine import rel


class DistilledData(nn.Module):
    """Synthetic inputs as a product of two factors, and fixed targets (a buffer)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.left = nn.Parameter(torch.randn(3, 4, 2, dtype=torch.float64, generator=g))
        self.right = nn.Parameter(torch.randn(2, 5, dtype=torch.float64, generator=g))
        self.register_buffer("targets", torch.randn(3, 4, 3, dtype=torch.float64, generator=g))

    def get_batch(self, t):
        i = t % 3
        return self.left[i] @ self.right, self.targets[i]


def outer_fn(f):
    x = torch.linspace(-1, 1, 40, dtype=torch.float64).reshape(8, 5)
    return f(x).pow(2).mean()


def test_a_module_the_loss_closes_over_gets_the_loose_tensors_gradients():
    model, data = mlp(), DistilledData()

    def closed_over(f, t, _data):  # calls the module it closes over, not the argument
        x, y = data.get_batch(t)
        return ((f(x) - y) ** 2).mean()

    def loose(f, t, left, right):
        i = t % 3
        return ((f(left[i] @ right) - data.targets[i]) ** 2).mean()

    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    got = meta_gradient(model, closed_over, outer_fn, 12, meta=(data,), optimizer=sgd)
    left = data.left.detach().clone().requires_grad_()
    right = data.right.detach().clone().requires_grad_()
    want = unrolled_meta_gradient(model, loose, outer_fn, 12, meta=(left, right), optimizer=sgd)
    assert set(got.meta_grads[0]) == {"left", "right"}
    assert rel(got.meta_grads[0]["left"], want.meta_grads[0]) < 1e-11
    assert rel(got.meta_grads[0]["right"], want.meta_grads[1]) < 1e-11
    assert rel(data.left.grad, want.meta_grads[0]) < 1e-11  # landed in .grad

    data.zero_grad()
    trained = unroll(model, closed_over, 12, meta=(data,), lr=0.02)  # Adam, keep .backward()
    outer_fn(lambda *a: torch.func.functional_call(model, dict(trained), a)).backward()
    adam = unrolled_meta_gradient(model, loose, outer_fn, 12, meta=(left, right), lr=0.02)
    assert rel(data.left.grad, adam.meta_grads[0]) < 1e-9
    assert rel(data.right.grad, adam.meta_grads[1]) < 1e-9


def test_without_meta_the_closed_over_module_is_refused_and_bad_items_named():
    model, data = mlp(), DistilledData()

    def closed_over(f, t):
        x, y = data.get_batch(t)
        return ((f(x) - y) ** 2).mean()

    with pytest.raises(ValueError, match="reaches 2 tensor\\(s\\) that require grad"):
        unroll(model, closed_over, 2)
    with pytest.raises(ValueError, match=r"meta\[0\] is a Linear with no parameter that requires"):
        unroll(model, closed_over, 2, meta=(nn.Linear(2, 2).requires_grad_(False),))
    with pytest.raises(TypeError, match=r"meta\[0\] must be a tensor or an nn.Module, got dict"):
        unroll(model, closed_over, 2, meta=({"x": data.left},))


def test_a_meta_module_parameter_the_loss_never_reads_is_named_in_a_warning():
    model, data = mlp(), DistilledData()
    data.unused = nn.Parameter(torch.zeros(2, dtype=torch.float64))

    def closed_over(f, t, _data):
        x, y = data.get_batch(t)
        return ((f(x) - y) ** 2).mean()

    with pytest.warns(UserWarning, match=r"never used meta\[0\]\.unused: their gradient"):
        result = meta_gradient(model, closed_over, outer_fn, 3, meta=(data,), lr=0.01)
    assert torch.equal(result.meta_grads[0]["unused"], torch.zeros(2, dtype=torch.float64))


class TwoHeads(nn.Module):
    """A model returning a dict, as multi-task and Hugging Face models do."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.body = nn.Linear(5, 6).double()
        self.head = nn.Linear(6, 3).double()
        self.aux = nn.Linear(6, 1).double()

    def forward(self, x):
        h = self.body(x).tanh()
        return {"prediction": self.head(h), "aux": self.aux(h).squeeze(-1)}


@pytest.mark.parametrize("optimizer", ["adam-l2", "sgd-nesterov"])
def test_dict_outputs_and_a_vmapped_per_example_loss_match_unrolled_autograd(optimizer):
    """torch.func inside the inner loss (vmap of the model over examples, each weighted by a
    meta tensor) and a model returning a dict: the same gradients as unrolled autograd."""
    model, data = TwoHeads(), DistilledData()
    weights = torch.linspace(0.5, 1.5, 4, dtype=torch.float64).requires_grad_()

    def per_example(f, x, y):
        def example(xi, yi):
            out = f(xi)
            return ((out["prediction"] - yi) ** 2).mean() + 0.1 * out["aux"] ** 2

        return torch.func.vmap(example)(x, y)

    def loss_fn(f, t, data, weights):
        return (weights * per_example(f, *data.get_batch(t))).mean()

    def loose(f, t, left, right, weights):
        i = t % 3
        return (weights * per_example(f, left[i] @ right, data.targets[i])).mean()

    def outer(f):
        return outer_fn(lambda x: f(x)["prediction"])

    users = (torch.optim.Adam(model.parameters(), lr=0.02, weight_decay=0.1)
             if optimizer == "adam-l2" else
             torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True))
    got = meta_gradient(model, loss_fn, outer, 9, meta=(data, weights), optimizer=users)
    left = data.left.detach().clone().requires_grad_()
    right = data.right.detach().clone().requires_grad_()
    want = unrolled_meta_gradient(model, loose, outer, 9, meta=(left, right, weights),
                                  optimizer=users)
    assert rel(got.meta_grads[0]["left"], want.meta_grads[0]) < 1e-9
    assert rel(got.meta_grads[0]["right"], want.meta_grads[1]) < 1e-9
    assert rel(got.meta_grads[1], want.meta_grads[2]) < 1e-9
