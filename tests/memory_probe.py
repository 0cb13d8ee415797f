"""Peak memory of one meta-gradient, run in a fresh process by test_engine.py:

    python -m tests.memory_probe {engine|engine-overlapped|unrolled} STEPS
                                                  (from the repository root)

`engine` runs on one torch thread, so its reverse pass is sequential; `engine-overlapped` on
two, so its two halves overlap on two threads (whatever the machine's core count).

Prints {"peak_mb": ...}: the process's peak resident set above its resident set after a
2-step warm-up run, so one-time costs (lazy imports, thread pools) stay out of it.
"""

import json
import sys

import torch
from torch import nn

from benchmarks.timing import peak_resident_mb, resident_mb
from farzi_fast.engine import meta_gradient, unrolled_meta_gradient


def main():
    mode, steps = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    torch.set_num_threads(2 if mode == "engine-overlapped" else 1)
    model = nn.Sequential(nn.Linear(256, 512), nn.Tanh(), nn.Linear(512, 512), nn.Tanh(),
                          nn.Linear(512, 256))  # ~0.5M parameters, 2 MB per state copy
    x = torch.randn(8, 256, requires_grad=True)
    y, x_val, y_val = torch.randn(8, 256), torch.randn(8, 256), torch.randn(8, 256)

    def loss_fn(f, t, x):
        return ((f(x) - y) ** 2).mean()

    def outer_fn(f):
        return ((f(x_val) - y_val) ** 2).mean()

    def run(t):
        if mode.startswith("engine"):  # pure reversal: nothing kept per step but a generator state
            meta_gradient(model, loss_fn, outer_fn, t, meta=(x,), anchor_every=t, anchor_head=0)
        else:
            unrolled_meta_gradient(model, loss_fn, outer_fn, t, meta=(x,))

    run(2)  # warm-up: lazy imports, thread pools, first-touch costs stay out of the peak
    base = resident_mb()
    run(steps)
    peak = peak_resident_mb()
    print(json.dumps({"peak_mb": peak - base}))


if __name__ == "__main__":
    main()
