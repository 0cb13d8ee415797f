"""Meta-gradient time and peak memory against the number of inner steps T, side by side:
unrolled autograd (a create_graph=True loop of differentiable Adam), the engine on the
`torch` backend (the unfused form of the same algorithm) and the engine on the fused
backend of the device. Ratios are against unrolled autograd measured in the same run.

Peak memory: on CUDA, torch.cuda.max_memory_allocated above the allocation before the run;
on the CPU, each point runs in a fresh process and reports its peak resident set above the
resident set after a 2-step warm-up run (glibc's mmap threshold fixed, so freed blocks are returned
rather than fragmenting the heap).

    python -m benchmarks.bench_engine [--steps 10,50,100,200,500] [--device cuda] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from farzi_fast import ops
from farzi_fast.engine import meta_gradient, unrolled_meta_gradient

from .report import write_report
from .students import PROBLEMS
from .timing import device_name, peak_resident_mb, resident_mb, sync


def measure_point(problem_name: str, method: str, steps: int, device: torch.device,
                  repeats: int = 3) -> dict:
    """Median seconds of `repeats` meta-gradients and the peak MB of the first (after a
    2-step warm-up run)."""
    model, problem = PROBLEMS[problem_name](torch.float32, device=device)
    meta = problem.meta

    def run(t):
        if method == "unrolled autograd":
            return unrolled_meta_gradient(model, problem.loss_fn, problem.outer_fn, t,
                                          meta=meta, lr=problem.lr)
        backend = "torch" if method == "engine[torch]" else "auto"
        return meta_gradient(model, problem.loss_fn, problem.outer_fn, t, meta=meta,
                             lr=problem.lr, backend=backend)

    run(2)  # warm-up: module loading, thread pools and the allocator's first blocks
    sync(device)
    base = resident_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(steps)
        sync(device)
        times.append(time.perf_counter() - start)
        if len(times) == 1:  # the peak of the first run (the others reuse its memory)
            if device.type == "cuda":
                peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
            else:
                peak = peak_resident_mb() - base
    return dict(seconds=statistics.median(times), peak_mb=peak)


def _point_in_subprocess(problem_name, method, steps) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_engine", "--one",
                          json.dumps([problem_name, method, steps])],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(steps_list, device: torch.device) -> dict:
    fused = "cuda" if device.type == "cuda" and "cuda" in ops.available_backends() else "cpu"
    methods = ["unrolled autograd", "engine[torch]", f"engine[{fused}]"]
    rows = []
    for problem_name in PROBLEMS:
        for steps in steps_list:
            points = {}
            for method in methods:
                if device.type == "cuda":
                    points[method] = measure_point(problem_name, method, steps, device)
                else:
                    points[method] = _point_in_subprocess(problem_name, method, steps)
            base = points["unrolled autograd"]
            for method, point in points.items():
                rows.append(dict(student=problem_name, steps=steps, method=method,
                                 seconds=point["seconds"], peak_mb=point["peak_mb"],
                                 time_vs_unrolled=point["seconds"] / base["seconds"],
                                 memory_vs_unrolled=point["peak_mb"] / max(base["peak_mb"], 1e-9)))
            print(f"{problem_name} T={steps}: "
                  + ", ".join(f"{m} {p['seconds']:.2f}s {p['peak_mb']:.0f}MB"
                              for m, p in points.items()), file=sys.stderr)
    return dict(device=device_name(device), torch=torch.__version__, rows=rows)


COLUMNS = [("student", "student"), ("steps", "T"), ("method", "method"),
           ("seconds", "seconds"), ("peak_mb", "peak MB"),
           ("time_vs_unrolled", "time / unrolled"), ("memory_vs_unrolled", "memory / unrolled")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="10,50,100,200,500")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # subprocess mode
    args = parser.parse_args(argv)
    if args.one:
        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
        name, method, steps = json.loads(args.one)
        print(json.dumps(measure_point(name, method, steps, torch.device("cpu"))))
        return
    result = run([int(s) for s in args.steps.split(",")], torch.device(args.device))
    print(write_report(result, COLUMNS, "engine", args.out))


if __name__ == "__main__":
    main()
