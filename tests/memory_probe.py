"""Peak memory of one meta-gradient, run in a fresh process by test_engine.py:

    python tests/memory_probe.py {engine|unrolled} STEPS

Prints {"peak_mb": ...}: the process's peak resident set above its resident set just before
the run (after imports, model and data), so one-time costs are the same for every STEPS.
"""

import json
import resource
import sys

import torch
from torch import nn

from farzi_fast.engine import meta_gradient, unrolled_meta_gradient


def resident_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def main():
    mode, steps = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(256, 512), nn.Tanh(), nn.Linear(512, 512), nn.Tanh(),
                          nn.Linear(512, 256))  # ~0.5M parameters, 2 MB per state copy
    x = torch.randn(8, 256, requires_grad=True)
    y, x_val, y_val = torch.randn(8, 256), torch.randn(8, 256), torch.randn(8, 256)

    def loss_fn(f, t, x):
        return ((f(x) - y) ** 2).mean()

    def outer_fn(f):
        return ((f(x_val) - y_val) ** 2).mean()

    base = resident_mb()
    if mode == "engine":  # pure reversal: nothing kept per step but a generator state
        meta_gradient(model, loss_fn, outer_fn, steps, meta=(x,), anchor_every=steps,
                      anchor_head=0)
    else:
        unrolled_meta_gradient(model, loss_fn, outer_fn, steps, meta=(x,))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak - base}))


if __name__ == "__main__":
    main()
