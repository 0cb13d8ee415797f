"""Where a distillation's time goes, phase by phase, on a data set of any size: data loading,
teacher, pool, the initial summary, one outer step split into the inner loops' forward, the
outer loss and the reverse pass, and one validation split into the student's training and
its rankings (all users, and a fixed sample of them). Each phase is timed on a few of its
units and multiplied by how many the preset runs: the projection of a whole run.

    python -m benchmarks.profile_distill --interactions ../shared/data/amazon/Beauty.txt \\
        --threads 2 --out benchmarks/results/cpu-amd-epyc-2threads
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from farzi_fast import RunOptions
from farzi_fast.data import load_interactions
from farzi_fast.distillation.budget import fit_to_log, log_shape
from farzi_fast.distillation.outer_step import draw_loops, inner_loop
from farzi_fast.distillation.presets import Preset, preset
from farzi_fast.distillation.start import initial_summary, pretrained_pool
from farzi_fast.engine import unroll
from farzi_fast.training import VALIDATION, load_task, recommendation_task, train_student
from farzi_fast.training.metrics import evaluate_recommender

from .report import write_report
from .timing import device_name, peak_resident_mb


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def profile(task, chosen: Preset, probe_steps: int, sample: int) -> list:
    config = chosen.config
    outer_steps = config.outer_steps
    sizes = dataclasses.asdict(chosen.student)
    rows = []

    def add(phase, seconds, units, per_run, note=""):
        rows.append(dict(phase=phase, seconds=round(seconds, 3), units=units,
                         per_unit=round(seconds / max(units, 1), 4), per_run=per_run,
                         run_seconds=round(seconds / max(units, 1) * per_run, 1), note=note))
        print(rows[-1], flush=True)

    train, seconds = timed(task.train_rows)
    add("real rows", seconds, 1, 1, f"{tuple(train.shape)}")
    torch.manual_seed(0)
    student = task.student(**sizes)
    teacher = task.student(**sizes)
    _, seconds = timed(lambda: train_student(teacher, train, steps=probe_steps,
                                             lr=config.pretrain_lr, seed=0))
    add("teacher training step", seconds, probe_steps, config.teacher_training_steps)
    pool, seconds = timed(lambda: pretrained_pool(student, train, config))
    add("pool", seconds, 1, 1, f"{len(pool)} starts")
    generator = torch.Generator().manual_seed(0)
    summary, seconds = timed(lambda: initial_summary(student, train, config, pool, teacher,
                                                     student.vocab_size, generator))
    add("initial summary (teacher's labels)", seconds, 1, 1)

    padding_id = student.padding_id
    loop = draw_loops(config, len(pool), len(train), generator)[0]
    real = train[loop[1]]

    def forward_only():
        with torch.no_grad():
            return unroll(student, lambda f, t, *meta: soft_loss_of(f, summary, meta,
                                                                    padding_id),
                          config.inner_steps, meta=summary.meta, lr=config.inner_lr,
                          eps=config.inner_eps, init=pool[loop[0]])

    _, seconds = timed(forward_only)
    add("inner loop: forward (T steps)", seconds, 1, config.outer_steps * config.meta_batch)
    _, seconds = timed(lambda: inner_loop(student, summary, config, RunOptions(),
                                          pool[loop[0]], real, padding_id, 1, 0))
    add("inner loop: forward, outer loss and reverse", seconds, 1,
        config.outer_steps * config.meta_batch)

    soft = summary.soft().detach()
    validations = outer_steps // chosen.validate_every + 1
    fresh = task.student(**sizes)
    _, seconds = timed(lambda: train_student(fresh, soft, steps=probe_steps,
                                             lr=VALIDATION.lr, seed=0))
    add("validation: student step on the summary", seconds, probe_steps,
        validations * VALIDATION.max_steps, "at most: patience may stop it sooner")
    evaluations = validations * VALIDATION.max_steps // VALIDATION.eval_every
    _, seconds = timed(lambda: evaluate_recommender(fresh, task.data, "valid", task.max_len))
    add(f"validation: ranking all {task.data.num_users} users", seconds, 1, evaluations)
    sampled = task.sample_users(sample)
    _, seconds = timed(lambda: evaluate_recommender(fresh, sampled.data, "valid",
                                                    task.max_len))
    add(f"validation: ranking {sampled.data.num_users} sampled users", seconds, 1,
        evaluations)
    return rows


def soft_loss_of(f, summary, meta, padding_id):
    from farzi_fast.training.train import soft_loss

    return soft_loss(f, summary.soft(*meta), padding_id, by_position=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--interactions", help="an interaction log, any format the CLI reads")
    source.add_argument("--dataset", choices=["ml-100k"])
    parser.add_argument("--data", default=None)
    parser.add_argument("--preset", choices=["cpu", "paper"], default="cpu")
    parser.add_argument("--outer-steps", type=int, default=None)
    parser.add_argument("--probe-steps", type=int, default=20,
                        help="training steps timed for the teacher and the validation student")
    parser.add_argument("--sample", type=int, default=2000, help="users of a sampled ranking")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--name", default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    max_len = preset("ml-100k", args.preset).max_len
    start = time.perf_counter()
    if args.interactions:
        task = recommendation_task(load_interactions(args.interactions), "interactions",
                                   max_len)
        name = Path(args.interactions).stem
    else:
        task = load_task(args.dataset, args.data, max_len)
        name = args.dataset
    loading = time.perf_counter() - start
    chosen = preset("ml-100k", args.preset)
    if args.outer_steps:
        chosen = chosen.replace(outer_steps=args.outer_steps)
    elif args.interactions and args.preset == "cpu":  # as `farzi-fast distill` fits it
        shape = log_shape(task.data.train_sequences(), task.data.num_items, args.sample)
        chosen = fit_to_log(chosen, shape).preset
    rows = [dict(phase="data loading", seconds=round(loading, 3), units=1,
                 per_unit=round(loading, 4), per_run=1, run_seconds=round(loading, 1),
                 note=f"{task.data.num_users} users, {task.data.num_items} items")]
    rows += profile(task, chosen, args.probe_steps, args.sample)
    columns = [("phase", "phase"), ("per_unit", "s per unit"), ("units", "units timed"),
               ("per_run", "units in a run"), ("run_seconds", "s in a run"), ("note", "note")]
    total = sum(r["run_seconds"] for r in rows if "sampled" not in r["phase"]
                and r["phase"] != "inner loop: forward (T steps)")
    print(write_report(dict(device=device_name(torch.device("cpu")), torch=torch.__version__,
                            rows=rows, total_seconds=total, peak_mb=peak_resident_mb()),
                       columns, args.name or f"profile-{name}-{args.preset}", args.out,
                       note=f"projected run: {total / 60:.1f} min with full-ranking validation"))


if __name__ == "__main__":
    main()
