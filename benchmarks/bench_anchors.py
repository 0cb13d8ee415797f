"""How accurate are float32 meta-gradients for each anchor schedule? Relative error of the
engine in float32 against unrolled autograd in float64 (same initial weights and data), on
a tiny MLP, an MLP, a small causal Transformer and the distillation workloads (dropout off,
so both precisions see the same model), next to float32 unrolled autograd: the floor no
float32 method gets under. This table chose DEFAULT_ANCHOR_EVERY / DEFAULT_ANCHOR_HEAD.
TorchOpt is not in it: its MetaAdam is a slightly different function from torch.optim.Adam
(float64 parameters differ by 7e-8 after one step of lr 1e-2), so against this reference
it would measure that difference, not float32 round-off.

    python -m benchmarks.bench_anchors [--steps 100,300] [--students ...] [--data DIR] [--out DIR]
                                       [--name anchors] [--memory-budget-mb MB]

A T at which the float64 reference would need more than --memory-budget-mb (default 12 GB)
is skipped (students.unrolled_fits).
"""

from __future__ import annotations

import argparse
import sys

import torch

from farzi_fast.engine import meta_gradient, unrolled_meta_gradient

from .report import write_report
from .students import (
    MEMORY_BUDGET_MB,
    PROBLEMS,
    WORKLOADS,
    add_options,
    chosen_students,
    relative_error,
    tiny_mlp_problem,
    unrolled_fits,
)
from .timing import device_name

STUDENTS = {"tiny MLP": tiny_mlp_problem, **PROBLEMS, **WORKLOADS}

SCHEDULES = {
    "pure reversal": dict(anchor_every=10**9, anchor_head=0),
    "every 10, no head": dict(anchor_every=10, anchor_head=0),
    "head 8 + every 10": dict(anchor_every=10, anchor_head=8),
    "head 8 + every 25 (default)": dict(anchor_every=25, anchor_head=8),
    "head 8 + every 50": dict(anchor_every=50, anchor_head=8),
    "head 8 + every 4": dict(anchor_every=4, anchor_head=8),
    "every step": dict(anchor_every=1, anchor_head=0),
    # the same math by torch.compile'd steps (engine/compiled.py): fused, so rounded apart
    "head 8 + every 25, compile=True": dict(anchor_every=25, anchor_head=8, compile=True),
}


def run(steps_list, students=tuple(STUDENTS), memory_budget_mb: int = MEMORY_BUDGET_MB) -> dict:
    rows = []
    for name in students:
        build = STUDENTS[name]
        for steps in steps_list:
            if not unrolled_fits(name, steps, torch.float64, memory_budget_mb):
                print(f"{name} T={steps}: skipped (the float64 reference would need more than "
                      f"--memory-budget-mb {memory_budget_mb})", file=sys.stderr)
                continue
            model32, problem32 = build(torch.float32, train=False)
            model64, problem64 = build(torch.float32, train=False, widen=True)
            want = unrolled_meta_gradient(model64, problem64.loss_fn, problem64.outer_fn, steps,
                                          meta=problem64.meta, lr=problem64.lr)
            floor = unrolled_meta_gradient(model32, problem32.loss_fn, problem32.outer_fn, steps,
                                           meta=problem32.meta, lr=problem32.lr)
            rows.append(dict(student=name, steps=steps, schedule="float32 unrolled autograd "
                             "(the floor)", anchors=steps, rel_error=relative_error(floor, want)))
            for label, schedule in SCHEDULES.items():
                schedule = dict(schedule, anchor_every=min(schedule["anchor_every"], steps))
                got = meta_gradient(model32, problem32.loss_fn, problem32.outer_fn, steps,
                                    meta=problem32.meta, lr=problem32.lr, **schedule)
                # the drift report has one entry per anchor the reverse pass re-anchored on
                rows.append(dict(student=name, steps=steps, schedule=label,
                                 anchors=len(got.report.anchors),
                                 rel_error=relative_error(got, want)))
    return dict(device=device_name(torch.device("cpu")), torch=torch.__version__, rows=rows)


COLUMNS = [("student", "student"), ("steps", "T"), ("schedule", "anchor schedule"),
           ("anchors", "anchors kept"), ("rel_error", "float32 rel. error vs float64")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser, STUDENTS, steps="100,300", name="anchors",
                budget="skip a T whose float64 reference would need more MB")
    args = parser.parse_args(argv)
    students = chosen_students(parser, args, STUDENTS)
    result = run(args.steps, students, args.memory_budget_mb)
    print(write_report(result, COLUMNS, args.name, args.out))


if __name__ == "__main__":
    main()
