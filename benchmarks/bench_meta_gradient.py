"""How alike are two meta-gradients of the same summary? Pairwise cosines of dF/d(summary)
from inner loops that differ in their start (a pool checkpoint), their real batch, their
dropout masks, or all three as in an outer step; a control that varies nothing must give 1.
A cosine c between single loops means an average of k loops agrees with another such average
at about k c / (1 + (k - 1) c): the "loops for 0.5" column is the k at which that reaches one
half, i.e. how many inner loops an outer step would need before its direction is more signal
than noise.

    python -m benchmarks.bench_meta_gradient --dataset ml-100k [--preset cpu]
        [--variant default] [--loops 5] [--seed 0] [--dropout P] [--data DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import torch

from farzi_fast import RunOptions
from farzi_fast.distillation.outer_step import inner_loop
from farzi_fast.distillation.start import initial_summary, pretrained_pool

from .bench_distill import VARIANTS, run_config, student_factory, variant_preset
from .report import write_report
from .students import task_or_refuse
from .timing import device_name

CONDITIONS = ("start, batch and dropout masks (an outer step's loops)", "real batch",
              "start", "dropout masks", "nothing (control)")


def loops_for_half(c: float):
    """Loops k whose average agrees with another's at one half, k c / (1 + (k - 1) c) = 0.5:
    at least one; none ("") when the loops share no direction (c <= 0)."""
    return max(1, round((1 - c) / c)) if c > 0 else ""


def run(task, cfg, variant: str, loops: int, seed: int, device) -> dict:
    """Meta-gradients of the seed's start under each condition; one row per condition."""
    config = run_config(cfg, variant, seed)
    torch.manual_seed(seed)
    student = student_factory(task, cfg, "transformer", device)()
    train = task.train_rows().to(device)
    pool = pretrained_pool(student, train, config)
    generator = torch.Generator().manual_seed(seed)
    summary = initial_summary(student, train, config, pool, None, student.vocab_size,
                              generator)
    order = torch.randperm(len(pool), generator=generator)  # distinct while the pool lasts
    starts = [int(order[i % len(pool)]) for i in range(loops)]
    batches = [torch.randint(len(train), (min(config.outer_batch, len(train)),),
                             generator=generator) for _ in range(loops)]
    varied = {CONDITIONS[0]: (starts, batches, range(loops)),
              CONDITIONS[1]: ([starts[0]] * loops, batches, [0] * loops),
              CONDITIONS[2]: (starts, [batches[0]] * loops, [0] * loops),
              CONDITIONS[3]: ([starts[0]] * loops, [batches[0]] * loops, range(loops)),
              CONDITIONS[4]: ([starts[0]] * loops, [batches[0]] * loops, [0] * loops)}
    rows = []
    for condition, (start_ids, batch_ids, loop_ids) in varied.items():
        losses, grads = [], []
        for start, batch, loop in zip(start_ids, batch_ids, loop_ids):
            # the very function an outer step calls, at outer step 1 (its dropout seeds)
            loss, loop_grads, _ = inner_loop(student, summary, config, RunOptions(),
                                             pool[start], train[batch], task.padding_id, 1,
                                             loop)
            losses.append(float(loss))
            grads.append(torch.cat([g.flatten() for g in loop_grads]).double())
        cosines = [float(torch.nn.functional.cosine_similarity(a, b, dim=0))
                   for a, b in itertools.combinations(grads, 2)]
        c = statistics.mean(cosines)
        rows.append(dict(condition=condition, loops=loops, cos_mean=c, cos_min=min(cosines),
                         cos_max=max(cosines), loss_mean=statistics.mean(losses),
                         loss_std=statistics.stdev(losses),
                         loops_for_half=loops_for_half(c)))
        print(rows[-1], flush=True)
    return dict(device=device_name(device), torch=torch.__version__, variant=variant,
                seed=seed, config=config.as_dict(), rows=rows)


COLUMNS = [("condition", "loops differ in"), ("loops", "loops"), ("cos_mean", "cosine mean"),
           ("cos_min", "min"), ("cos_max", "max"), ("loss_mean", "meta-loss mean"),
           ("loss_std", "std"), ("loops_for_half", "loops for 0.5")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["ml-100k", "ptb"], required=True)
    parser.add_argument("--preset", choices=["cpu", "paper"], default="cpu")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="default")
    parser.add_argument("--loops", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dropout", type=float, default=None,
                        help="the student's dropout (default: the preset's); with 0 the "
                             "dropout masks vary nothing")
    parser.add_argument("--data", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.loops < 2:
        parser.error(f"--loops must be >= 2 (cosines of pairs), got {args.loops}")
    if args.dropout is not None and not 0 <= args.dropout < 1:
        parser.error(f"--dropout must lie in [0, 1), got {args.dropout}")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = variant_preset(args.dataset, args.preset, args.variant)
    if args.dropout is not None:
        cfg["dropout"] = args.dropout
    task = task_or_refuse(parser, args.dataset, args.data, cfg["max_len"])
    result = run(task, cfg, args.variant, args.loops, args.seed, torch.device(args.device))
    name = (f"meta-gradient-{args.dataset}-{args.preset}-{args.variant}" +
            (f"-dropout{args.dropout:g}" if args.dropout is not None else ""))
    print(write_report(result, COLUMNS, name, args.out))


if __name__ == "__main__":
    main()
