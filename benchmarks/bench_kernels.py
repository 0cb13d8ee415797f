"""Kernel benchmarks: `adam_step` per backend against torch.optim.Adam (foreach and fused),
as one flat buffer and as 64 tensors, and the reverse step per backend against the `torch`
reference. The implementations of one op take turns, one call each per round, on shared
input sets rotated past the cache. Prints a markdown table (median time, GB/s, % of the copy
bandwidth measured in the same run, the byte floor) and writes JSON/CSV/markdown.

    python -m benchmarks.bench_kernels                   # 1M, 4M, 16M parameters
    python -m benchmarks.bench_kernels --sizes 1M --quick
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from farzi_fast import ops

from .report import parse_size, write_report
from .timing import Rotation, copy_bandwidth, device_name, interleaved_medians

FORWARD_BYTES = 28   # per float32 parameter: read w g m v, write w m v
REVERSE_BYTES = 76   # reverse_params with hvp (44) + reverse_moments (32)
TENSOR_SPLIT = 64


@dataclass
class Case:
    op: str
    impl: str
    layout: str
    bytes_per_param: int
    run: object  # callable taking one input set from the rotation


def _split(flat: torch.Tensor, parts: int) -> list[torch.Tensor]:
    return list(flat.chunk(parts))


def forward_set(n: int, device: torch.device):
    """(w, g, m, v) as after a few steps of training."""
    return (torch.randn(n, device=device), torch.randn(n, device=device),
            0.1 * torch.randn(n, device=device), torch.rand(n, device=device) + 0.01)


def reverse_set(n: int, device: torch.device):
    """(w, m, v, w_bar, m_bar, v_bar, g, g_bar); g doubles as the hvp input."""
    w, _, m, v = forward_set(n, device)
    adjoints = [torch.randn(n, device=device) for _ in range(4)]
    return (w, m, v, *adjoints, torch.empty(n, device=device))


def forward_cases(backends) -> list[Case]:
    cases = []
    for backend in backends:
        def flat(s, backend=backend):
            ops.adam_step(*s, step=10, lr=1e-3, backend=backend)

        def looped(s, backend=backend):
            for parts in zip(*(_split(t, TENSOR_SPLIT) for t in s)):
                ops.adam_step(*parts, step=10, lr=1e-3, backend=backend)

        cases.append(Case("adam_step", f"farzi_fast[{backend}]", "flat", FORWARD_BYTES, flat))
        cases.append(Case("adam_step", f"farzi_fast[{backend}]", f"{TENSOR_SPLIT} tensors",
                          FORWARD_BYTES, looped))
    for flavour in ("foreach", "fused"):
        for layout, parts in (("flat", 1), (f"{TENSOR_SPLIT} tensors", TENSOR_SPLIT)):
            optimizers = {}

            def optim_step(s, flavour=flavour, parts=parts, optimizers=optimizers):
                if id(s) not in optimizers:  # one optimizer per rotated input set
                    params = [torch.nn.Parameter(p) for p in _split(s[0], parts)]
                    for p, grad in zip(params, _split(s[1], parts)):
                        p.grad = grad
                    optimizers[id(s)] = torch.optim.Adam(params, lr=1e-3, **{flavour: True})
                optimizers[id(s)].step()

            cases.append(Case("adam_step", f"torch.optim.Adam({flavour}=True)", layout,
                              FORWARD_BYTES, optim_step))
    return cases


def reverse_cases(backends) -> list[Case]:
    cases = []
    for backend in ["torch", *backends]:
        def reverse(s, backend=backend):
            w, m, v, w_bar, m_bar, v_bar, g, g_bar = s
            ops.adam_reverse_params(w, m, v, w_bar, m_bar, v_bar, g, step=10, lr=1e-3,
                                    backend=backend)
            ops.adam_reverse_moments(m, v, g, m_bar, v_bar, g_bar, backend=backend)

        impl = "reference (torch backend)" if backend == "torch" else f"farzi_fast[{backend}]"
        cases.append(Case("reverse step", impl, "flat", REVERSE_BYTES, reverse))
    return cases


def run(sizes: list[int], device: torch.device, quick: bool = False) -> dict:
    # Triton on CPU tensors is the interpreter: a correctness tool, not something to time.
    backends = [b for b in ops.available_backends()
                if b != "torch" and (b != "triton" or device.type == "cuda")]
    bandwidth = copy_bandwidth(device, n_bytes=(32 << 20) if quick else (256 << 20))
    rows = []
    for n in sizes:
        groups = [(forward_cases(backends), forward_set), (reverse_cases(backends), reverse_set)]
        for cases, make_set in groups:
            # One rotation per group: its cases take turns on the same input sets.
            rotation = Rotation(lambda: make_set(n, device),
                                n * max(c.bytes_per_param for c in cases), device)
            medians = interleaved_medians(
                {i: lambda case=case: case.run(rotation.next()) for i, case in enumerate(cases)},
                device, warmup=1 if quick else 3, repeats=3 if quick else 15)
            for i, case in enumerate(cases):
                seconds = medians[i]
                moved = case.bytes_per_param * n
                rows.append(dict(op=case.op, impl=case.impl, layout=case.layout, params=n,
                                 median_ms=seconds * 1e3, gb_per_s=moved / seconds / 1e9,
                                 pct_of_copy_bw=100 * moved / bandwidth / seconds,
                                 floor_ms=moved / bandwidth * 1e3))
    return dict(device=device_name(device), torch=torch.__version__,
                copy_bandwidth_gb_per_s=bandwidth / 1e9, rows=rows)


COLUMNS = [("op", "op"), ("impl", "implementation"), ("layout", "layout"), ("params", "params"),
           ("median_ms", "median ms"), ("gb_per_s", "GB/s"), ("pct_of_copy_bw", "% of copy BW"),
           ("floor_ms", "floor ms")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1M,4M,16M", help="comma-separated, e.g. 1M,4M")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="few repeats (CI smoke run)")
    parser.add_argument("--out", default=None, help="folder for kernels.{json,csv,md}")
    args = parser.parse_args(argv)
    result = run([parse_size(s) for s in args.sizes.split(",")], torch.device(args.device),
                 args.quick)
    print(write_report(result, COLUMNS, "kernels", args.out,
                       note=f"copy bandwidth {result['copy_bandwidth_gb_per_s']:.1f} GB/s"))


if __name__ == "__main__":
    main()
