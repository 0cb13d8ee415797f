"""Meta-gradient time and peak memory against the number of inner steps T, side by side:
unrolled autograd (a create_graph=True loop of differentiable Adam), the engine on the
`torch` backend (the unfused form of the same algorithm) and the engine on the fused
backend of the device, eager and with compile=True (its compilation is paid in the warm-up
run, as a long run pays it once). Ratios are against unrolled autograd measured in the same run.

Time: the methods take turns, one run each per round, and each reports its median over the
rounds, so a slow spell of the machine (shared CPU VMs drift by tens of percent over a
minute) falls on every method alike rather than on whichever ran then.

Students: two small ones, a wide MLP, the examples' inner loops (examples/; the digits
ConvNet is meant for --optimizer sgd-momentum, its own; TD3's SASRec for Adam, whose coupled
weight decay it takes), and the distillation workloads (the cpu presets' SASRec and PTB LM
outer steps; these and TD3's read the shared data from --data or FARZI_FAST_DATA; a T at
which unrolled autograd would need more than --memory-budget-mb, default 12 GB, runs the
engine alone, without ratios, students.unrolled_fits). TorchOpt (MetaAdam, MetaSGD) and
`higher` are further baselines where installed (benchmarks/baselines.py).

`--optimizer` picks the inner optimizer, given to every method as the user's own
torch.optim instance: Adam (default), or SGD plain, with momentum 0.9, or Nesterov (no
compiled engine for SGD; its lr is the student's Adam lr), and to TorchOpt's MetaAdam or
MetaSGD with the same hyperparameters. Each method's meta-gradient is compared with
unrolled autograd's (the largest relative difference over the meta tensors, float32 against
float32).

Peak memory: on CUDA, torch.cuda.max_memory_allocated above the allocation before the run;
on the CPU, each point runs in a fresh process and reports its peak resident set above the
resident set after a 2-step warm-up run (glibc's mmap threshold fixed, so freed blocks are
returned rather than fragmenting the heap).

    python -m benchmarks.bench_engine [--steps 10,50,100,200,500] [--rounds 5] [--students ...]
                                      [--optimizer adam|sgd|sgd-momentum|sgd-nesterov]
                                      [--device cuda] [--data DIR] [--out DIR]
                                      [--memory-budget-mb MB]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import sys

import torch

from farzi_fast import ops
from farzi_fast.cli.options import positive
from farzi_fast.engine import meta_gradient, unrolled_meta_gradient

from .baselines import (
    HIGHER,
    TORCHOPT,
    higher,
    higher_meta_gradient,
    torchopt,
    torchopt_meta_gradient,
)
from .report import write_report
from .students import (
    EXAMPLES,
    MEMORY_BUDGET_MB,
    PROBLEMS,
    WORKLOADS,
    add_options,
    chosen_students,
    mlp_problem,
    relative_error,
    unrolled_fits,
)
from .timing import device_name, interleaved_medians, peak_resident_mb, resident_mb, sync

# The two small students of the issue, and a wide MLP (width 512: 284K parameters, same batch)
# on which the Adam math is a large share of a step: what the fused kernels can speed up is
# that share (research/NOTES.md, "engine").
STUDENTS = {**PROBLEMS, "wide MLP": functools.partial(mlp_problem, width=512), **WORKLOADS,
            **EXAMPLES}
# torch.optim.SGD's options per --optimizer ("adam": torch.optim.Adam)
OPTIMIZERS = {"adam": None, "sgd": {}, "sgd-momentum": dict(momentum=0.9),
              "sgd-nesterov": dict(momentum=0.9, nesterov=True)}


def make_runner(problem_name: str, device: torch.device, optimizer: str = "adam"):
    """run(method, steps): one meta-gradient of the named problem by the named method."""
    model, problem = STUDENTS[problem_name](torch.float32, device=device)
    sgd = OPTIMIZERS[optimizer]
    users = (torch.optim.Adam(model.parameters(), lr=problem.lr,
                              weight_decay=problem.weight_decay) if sgd is None
             else torch.optim.SGD(model.parameters(), lr=problem.lr,
                                  weight_decay=problem.weight_decay, **sgd))

    def run(method: str, steps: int):
        if method == "unrolled autograd":
            return unrolled_meta_gradient(model, problem.loss_fn, problem.outer_fn, steps,
                                          meta=problem.meta, optimizer=users)
        if method == TORCHOPT:
            return torchopt_meta_gradient(model, problem.loss_fn, problem.outer_fn, steps,
                                          meta=problem.meta, optimizer=users)
        if method == HIGHER:
            return higher_meta_gradient(model, problem.loss_fn, problem.outer_fn, steps,
                                        meta=problem.meta, optimizer=users)
        # "engine[cpu]" -> backend "cpu"; "engine[cpu, compiled]" -> "cpu", compile=True
        backend, *compiled = method.removeprefix("engine[").removesuffix("]").split(", ")
        return meta_gradient(model, problem.loss_fn, problem.outer_fn, steps,
                             meta=problem.meta, optimizer=users, backend=backend,
                             compile=bool(compiled))

    return run


def median_seconds_interleaved(problem_name: str, methods: list[str], steps: int,
                               device: torch.device, rounds: int = 5,
                               optimizer: str = "adam") -> tuple[dict, dict]:
    """Median seconds per method over `rounds` rounds in which every method runs once, and
    each method's last meta-gradient."""
    run = make_runner(problem_name, device, optimizer)
    for method in methods:
        run(method, 2)  # warm-up: module loading, thread pools, the allocator's first blocks
    last = {}

    def timed(method):
        last[method] = run(method, steps)

    seconds = interleaved_medians({m: functools.partial(timed, m) for m in methods}, device,
                                  warmup=0, repeats=rounds)
    return seconds, last


def peak_mb(problem_name: str, method: str, steps: int, device: torch.device,
            optimizer: str = "adam") -> float:
    """Peak memory of one meta-gradient above the memory held after a 2-step warm-up run.
    On the CPU this is only meaningful in a fresh process (see `_peak_in_subprocess`)."""
    run = make_runner(problem_name, device, optimizer)
    run(method, 2)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run(method, steps)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    base = resident_mb()
    run(method, steps)
    return peak_resident_mb() - base


def _peak_in_subprocess(problem_name: str, method: str, steps: int, optimizer: str) -> float:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_engine", "--one",
                          json.dumps([problem_name, method, steps, optimizer])],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(steps_list, device: torch.device, rounds: int = 5, students=tuple(STUDENTS),
        memory_budget_mb: int = MEMORY_BUDGET_MB, optimizer: str = "adam",
        only=None) -> dict:
    """Every method (or those named in `only`) on every student and T; the report's dict."""
    fused = "cuda" if device.type == "cuda" and "cuda" in ops.available_backends() else "cpu"
    adam = optimizer == "adam"  # compile=True: Adam only
    # all three keep every step
    unrolled = ["unrolled autograd", *([TORCHOPT] if torchopt else []),
                *([HIGHER] if higher else [])]
    engines = ["engine[torch]", f"engine[{fused}]", *([f"engine[{fused}, compiled]"] if adam
                                                      else [])]
    if only:
        unrolled = [m for m in unrolled if m == "unrolled autograd" or m in only]
        engines = [m for m in engines if m in only]
    rows = []
    for problem_name in students:
        for steps in steps_list:
            methods = engines
            if unrolled_fits(problem_name, steps, budget_mb=memory_budget_mb):
                methods = unrolled + engines
            else:  # the engine alone, without ratios: what no baseline here could run
                print(f"{problem_name} T={steps}: {' and '.join(unrolled)} skipped (would need "
                      f"more than --memory-budget-mb {memory_budget_mb})", file=sys.stderr)
            seconds, results = median_seconds_interleaved(problem_name, methods, steps,
                                                          device, rounds, optimizer)
            peaks = {method: peak_mb(problem_name, method, steps, device, optimizer)
                     if device.type == "cuda"
                     else _peak_in_subprocess(problem_name, method, steps, optimizer)
                     for method in methods}
            base = "unrolled autograd"
            for method in methods:
                row = dict(student=problem_name, steps=steps, method=method,
                           seconds=seconds[method], peak_mb=peaks[method])
                if base in methods:
                    row.update(time_vs_unrolled=seconds[method] / seconds[base],
                               memory_vs_unrolled=peaks[method] / max(peaks[base], 1e-9),
                               grad_vs_unrolled=relative_error(results[method],
                                                               results[base]))
                rows.append(row)
            print(f"{problem_name} T={steps}: "
                  + ", ".join(f"{m} {seconds[m]:.2f}s {peaks[m]:.0f}MB" for m in methods),
                  file=sys.stderr)
    return dict(device=device_name(device), torch=torch.__version__, optimizer=optimizer,
                threads=torch.get_num_threads(), rounds=rounds, rows=rows)


COLUMNS = [("student", "student"), ("steps", "T"), ("method", "method"),
           ("seconds", "seconds"), ("peak_mb", "peak MB"),
           ("time_vs_unrolled", "time / unrolled"), ("memory_vs_unrolled", "memory / unrolled"),
           ("grad_vs_unrolled", "meta-gradient rel. diff. to unrolled")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=positive, default=5)
    add_options(parser, STUDENTS, steps="10,50,100,200,500", name="engine",
                budget="at a T where unrolled autograd (and TorchOpt) would need more MB, run "
                       "the engine alone")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam",
                        help="the inner optimizer (default: adam)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated methods to run besides unrolled autograd, the "
                             "baseline (default: all; e.g. 'higher,engine[cpu]')")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # subprocess mode
    args = parser.parse_args(argv)
    if args.one:  # the parent checked the options and handed --data on in the environment
        name, method, steps, optimizer = json.loads(args.one)
        print(json.dumps(peak_mb(name, method, steps, torch.device("cpu"), optimizer)))
        return
    only = None
    if args.methods:  # commas inside brackets belong to a name: "engine[cpu, compiled]"
        only = [m.strip() for m in re.findall(r"[^,\[]+(?:\[[^\]]*\])?", args.methods)]
        known = {"unrolled autograd", TORCHOPT, HIGHER, *(
            f"engine[{b}{c}]" for b in ("torch", "cpu", "cuda") for c in ("", ", compiled"))}
        if not only or set(only) - known:
            parser.error(f"--methods must name methods among {sorted(known)}, got "
                         f"{args.methods!r}")
    students = chosen_students(parser, args, STUDENTS)  # --data reaches the subprocesses too
    result = run(args.steps, torch.device(args.device), args.rounds, students,
                 args.memory_budget_mb, args.optimizer, only)
    note = (f"{result['threads']} threads; inner optimizer {args.optimizer}; seconds: median "
            f"of {result['rounds']} rounds in which the methods take turns; float32")
    name = args.name if args.optimizer == "adam" else f"{args.name}-{args.optimizer}"
    print(write_report(result, COLUMNS, name, args.out, note))


if __name__ == "__main__":
    main()
