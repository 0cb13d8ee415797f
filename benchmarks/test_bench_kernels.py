"""pytest-benchmark versions of the kernel benchmarks (same cases as bench_kernels.py).

    pytest benchmarks --benchmark-enable [--benchmark-json out.json]

Sizes: 4M parameters, or BENCH_PARAMS (e.g. BENCH_PARAMS=16M).
"""

import os

import pytest
import torch

from farzi_fast import ops

from .bench_kernels import forward_cases, forward_set, reverse_cases, reverse_set
from .report import parse_size
from .timing import sync

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
N = parse_size(os.environ.get("BENCH_PARAMS", "4M"))
BACKENDS = [b for b in ops.available_backends()
            if b != "torch" and (b != "triton" or DEVICE.type == "cuda")]


CASES = [(case, forward_set) for case in forward_cases(BACKENDS)] + \
        [(case, reverse_set) for case in reverse_cases(BACKENDS)]


@pytest.mark.parametrize("case,make_set", CASES,
                         ids=[f"{c.op}-{c.impl}-{c.layout}".replace(" ", "_") for c, _ in CASES])
def test_kernel(benchmark, case, make_set):
    inputs = make_set(N, DEVICE)
    benchmark.extra_info.update(params=N, bytes=case.bytes_per_param * N)

    def run():
        case.run(inputs)
        sync(DEVICE)

    benchmark(run)
