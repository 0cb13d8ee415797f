"""Distillation results: a student trained on the full data, on a FarziData summary and on a
random subset of the same size (μ real sequences cut to ξ items), same student, same
training budget, test metrics side by side.

    python -m benchmarks.bench_distill --dataset ml-100k --out DIR            # small, CPU
    python -m benchmarks.bench_distill --dataset ml-100k --paper --out DIR    # paper size, GPU
"""

from __future__ import annotations

import argparse
import time

import torch

from farzi_fast import distill
from farzi_fast.farzi.tasks import load_task
from farzi_fast.farzi.train import random_subset, train_student

from .report import write_report
from .timing import device_name

# Small enough for a 2-core CPU in minutes; the paper's sizes are 50x150 (ML-100K) and
# the PTB summaries of its Table 2, run with --paper on a GPU.
CONFIGS = {
    "ml-100k": dict(small=dict(size=(50, 20), max_len=50, dim=50, heads=1, layers=2,
                               inner_steps=20, outer_steps=100, train_steps=400),
                    paper=dict(size=(50, 150), max_len=200, dim=50, heads=1, layers=2,
                               inner_steps=50, outer_steps=1000, train_steps=2000)),
    "ptb": dict(small=dict(size=(50, 20), max_len=20, dim=64, heads=2, layers=2,
                           inner_steps=10, outer_steps=40, train_steps=400),
                paper=dict(size=(200, 50), max_len=50, dim=128, heads=4, layers=2,
                           inner_steps=50, outer_steps=1000, train_steps=4000)),
}


def run(dataset: str, data_path, paper: bool, device: torch.device, seed: int = 0,
        pretrained_students: int = 2, out=None) -> dict:
    cfg = dict(CONFIGS[dataset]["paper" if paper else "small"],
               pretrained_students=pretrained_students)
    task = load_task(dataset, data_path, cfg["max_len"])
    student_args = dict(dim=cfg["dim"], heads=cfg["heads"], layers=cfg["layers"])
    rows = task.train_rows()
    mu, xi = cfg["size"]

    def fresh_student():
        torch.manual_seed(seed)
        return task.student(**student_args).to(device)

    def train_and_test(data, steps=cfg["train_steps"], lr=1e-3, batch_size=128):
        start = time.perf_counter()
        student = train_student(fresh_student(), data, steps=steps, lr=lr, seed=seed,
                                batch_size=batch_size)
        return task.evaluate(student, "test"), time.perf_counter() - start

    results = []
    full_metrics, full_time = train_and_test(rows)
    tokens_full = int((rows != 0).sum()) if dataset == "ml-100k" else rows.numel()
    results.append(("full data", f"{len(rows)} x {rows.shape[1]}", tokens_full, full_metrics,
                    full_time))

    start = time.perf_counter()
    summary = distill(fresh_student(), rows, size=(mu, xi), latent_dim=8,
                      inner_steps=cfg["inner_steps"], outer_steps=cfg["outer_steps"],
                      pretrained_students=pretrained_students, device=device, seed=seed)
    distill_time = time.perf_counter() - start
    if out is not None:
        summary.save(f"{out}/farzi-{dataset}-{mu}x{xi}.pt")
    soft = summary.soft().detach()
    farzi_metrics, farzi_train = train_and_test(soft)
    results.append(("FarziData", f"{mu} x {xi}", mu * xi, farzi_metrics,
                    distill_time + farzi_train))
    # the recipe the summary was optimised for: the inner loop's steps, lr and full batch
    inner_metrics, inner_train = train_and_test(soft, steps=cfg["inner_steps"], lr=1e-2,
                                                batch_size=mu)
    results.append(("FarziData, inner-loop recipe", f"{mu} x {xi}", mu * xi, inner_metrics,
                    distill_time + inner_train))

    subset = random_subset(rows, mu, seed)[:, -(xi + 1):]
    subset_tokens = int((subset != 0).sum())
    random_metrics, random_time = train_and_test(subset)
    results.append((f"random {mu} sequences", f"{mu} x {xi + 1}", subset_tokens,
                    random_metrics, random_time))
    random_inner, random_inner_time = train_and_test(subset, steps=cfg["inner_steps"], lr=1e-2,
                                                     batch_size=mu)
    results.append((f"random {mu} sequences, inner-loop recipe", f"{mu} x {xi + 1}",
                    subset_tokens, random_inner, random_inner_time))

    key = task.metric
    table = []
    for data, size, tokens, metrics, seconds in results:
        ratio = (metrics[key] / full_metrics[key] if task.higher_is_better
                 else full_metrics[key] / metrics[key])
        table.append(dict(dataset=dataset, data=data, size=size, tokens=tokens,
                          pct_tokens=100 * tokens / tokens_full, **metrics,
                          pct_of_full=100 * ratio, seconds=seconds))
    return dict(device=device_name(device), torch=torch.__version__, config=cfg, rows=table,
                metric=key)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(CONFIGS), required=True)
    parser.add_argument("--data", default=None)
    parser.add_argument("--paper", action="store_true", help="the paper-size configuration")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--pretrained-students", type=int, default=2,
                        help="students whose trajectories start the inner loops (0: random init)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    result = run(args.dataset, args.data, args.paper, torch.device(args.device),
                 pretrained_students=args.pretrained_students, out=args.out)
    metric_columns = [(k, k) for k in result["rows"][0] if "@" in k or k == "perplexity"]
    columns = [("data", "trained on"), ("size", "sequences x length"), ("tokens", "tokens"),
               ("pct_tokens", "% of tokens"), *metric_columns,
               ("pct_of_full", f"% of full {result['metric']}"), ("seconds", "seconds")]
    name = (f"distill-{args.dataset}{'-paper' if args.paper else ''}"
            f"-pretrained{args.pretrained_students}")
    note = "configuration: " + ", ".join(f"{k}={v}" for k, v in result["config"].items())
    print(write_report(result, columns, name, args.out, note=note))


if __name__ == "__main__":
    main()
