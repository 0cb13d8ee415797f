"""Inner/outer problems the engine benchmarks share: a small MLP on regression data, a small
causal Transformer LM trained on soft synthetic sequences, and the distillation workloads
themselves (the cpu presets' students and summaries on MovieLens-100K and Penn Treebank)."""

from __future__ import annotations

import argparse
import functools
import os
from dataclasses import dataclass

import torch
from torch import nn

from farzi_fast.cli.options import positive
from farzi_fast.distillation.presets import preset
from farzi_fast.models import transformer_lm
from farzi_fast.training.tasks import load_task
from farzi_fast.training.train import hard_loss, soft_loss


@dataclass
class Problem:
    loss_fn: object
    outer_fn: object
    meta: tuple
    lr: float
    weight_decay: float = 0.0  # the inner optimizer's (coupled L2 for Adam and SGD)


def relative_error(got, want) -> float:
    """The largest |g - w| / |w| over the meta tensors both results have a gradient for
    (NaN counts as inf)."""
    errors = []
    for g, w in zip(got.meta_grads, want.meta_grads):
        if w is not None:
            g, w = g.double(), w.double()
            errors.append(((g - w).norm() / w.norm()).item())
    error = max(errors)
    return error if error == error else float("inf")  # NaN -> inf


def _data(generator, dtype, widen, device, *shape):
    """Random data drawn on the CPU (same values on every device) in `dtype`, then widened to
    float64 exactly when asked (for float64 references of float32 runs)."""
    x = torch.randn(*shape, generator=generator).to(dtype)
    return (x.double() if widen else x).to(device)


def _finish(model, dtype, widen, device, train):
    return model.to(dtype).to(torch.float64 if widen else dtype).to(device).train(train)


def mlp_problem(dtype=torch.float32, train=True, widen=False, device="cpu", width=128,
                batches=4):
    """MLP 32-width-width-8 (~22K parameters at width 128); meta = the inner inputs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                          nn.Linear(width, 8))
    model = _finish(model, dtype, widen, device, train)
    g = torch.Generator().manual_seed(1)
    data = lambda *shape: _data(g, dtype, widen, device, *shape)  # noqa: E731
    x = data(batches, 16, 32).requires_grad_()
    y = data(batches, 16, 8)
    x_val, y_val = data(64, 32), data(64, 8)

    def loss_fn(f, t, x):
        i = t % x.shape[0]
        return ((f(x[i]) - y[i]) ** 2).mean()

    def outer_fn(f):
        return ((f(x_val) - y_val) ** 2).mean()

    return model, Problem(loss_fn, outer_fn, (x,), 3e-3)


def transformer_problem(dtype=torch.float32, train=True, widen=False, device="cpu", vocab=64,
                        seq=16):
    """2-layer causal Transformer LM, dim 32 (~35K parameters); meta = logits of 8 soft
    synthetic sequences; outer = cross-entropy on 16 random hard sequences."""
    torch.manual_seed(0)
    model = transformer_lm(vocab, max_len=seq, dim=32, heads=2, layers=2, dropout=0.1)
    model = _finish(model, dtype, widen, device, train)
    g = torch.Generator().manual_seed(1)
    logits = _data(g, dtype, widen, device, 8, seq, vocab).requires_grad_()
    real = torch.randint(vocab, (16, seq), generator=g).to(device)

    def loss_fn(f, t, logits):
        soft = logits.softmax(-1)
        log_probs = f(soft)[:, :-1].log_softmax(-1)
        return -(soft[:, 1:] * log_probs).sum(-1).mean()

    def outer_fn(f):
        out = f(real)[:, :-1]
        return nn.functional.cross_entropy(out.reshape(-1, vocab), real[:, 1:].reshape(-1))

    return model, Problem(loss_fn, outer_fn, (logits,), 1e-2)


def tiny_mlp_problem(dtype=torch.float32, train=True, widen=False, device="cpu"):
    """MLP 5-16-3 on 5 regression batches: a problem whose float32 meta-gradient is well
    conditioned (float32 unrolled autograd within 2e-6 of float64), so anchor schedules can
    be compared far below the float32 floor of the larger students."""
    torch.manual_seed(3)
    model = _finish(nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)), dtype, widen,
                    device, train)
    g = torch.Generator().manual_seed(1)
    data = lambda *shape: _data(g, dtype, widen, device, *shape)  # noqa: E731
    x, y = data(5, 4, 5).requires_grad_(), data(5, 4, 3)
    x_val, y_val = data(16, 5), data(16, 3)

    def loss_fn(f, t, x):
        return ((f(x[t % 5]) - y[t % 5]) ** 2).mean()

    def outer_fn(f):
        return ((f(x_val) - y_val) ** 2).mean()

    return model, Problem(loss_fn, outer_fn, (x,), 1e-2)


def distill_problem(dataset, dtype=torch.float32, train=False, widen=False, device="cpu",
                    data=None):
    """One outer step of `farzi-fast distill --preset cpu`: the preset's student (dropout 0,
    so float32 and float64 runs see the same model) trained on a μ × ξ summary of direct
    logits drawn N(0, 1), meta = those logits; outer = the real-data loss on 128 training
    rows. MovieLens-100K: SASRec dim 50 over 1683 items, 50 × 20; PTB: LM dim 64 over 10,000
    words, 50 × 20. Data from `data` or FARZI_FAST_DATA (never downloaded)."""
    config = preset(dataset, "cpu").settings()
    task = load_task(dataset, data, max_len=config["max_len"])
    torch.manual_seed(0)
    model = task.student(dim=config["dim"], heads=config["heads"], layers=config["layers"],
                         dropout=0.0)
    model = _finish(model, dtype, widen, device, train)
    g = torch.Generator().manual_seed(1)
    vocab = model.vocab_size
    logits = _data(g, dtype, widen, device, *config["size"], vocab).requires_grad_()
    rows = task.train_rows()
    real = rows[torch.randperm(len(rows), generator=g)[:128]].to(device)
    padding_id = getattr(model, "padding_id", None)

    def loss_fn(f, t, logits):
        return soft_loss(f, logits.softmax(-1), padding_id)

    def outer_fn(f):
        return hard_loss(f, real, padding_id)

    return model, Problem(loss_fn, outer_fn, (logits,), config["inner_lr"])


def digits_problem(dtype=torch.float32, train=True, widen=False, device="cpu"):
    """One outer step of examples/digits_momentum_sgd.py: its ConvNet (7K parameters) trained
    on 100 synthetic 8x8 digits (10 a class, started from real ones), meta = the images;
    outer = cross-entropy on 256 real training digits. The example's inner optimizer is SGD
    with momentum 0.9 at lr 0.1 (`bench_engine --optimizer sgd-momentum`)."""
    from examples import digits_momentum_sgd as example

    data = example.digits()
    synthetic = example.SyntheticImages(*data["train"], per_class=10)
    model = _finish(example.convnet(0), dtype, widen, device, train)
    wide = torch.float64 if widen else dtype
    images = synthetic.images.detach().to(dtype).to(wide).to(device).requires_grad_()
    labels = synthetic.labels.to(device)
    x_real, y_real = (t[:256].to(device) for t in data["train"])
    x_real = x_real.to(dtype).to(wide)

    def loss_fn(f, t, images):
        return nn.functional.cross_entropy(f(images), labels)

    def outer_fn(f):
        return nn.functional.cross_entropy(f(x_real), y_real)

    return model, Problem(loss_fn, outer_fn, (images,), 0.1)


def td3_problem(dtype=torch.float32, train=False, widen=False, device="cpu", data=None,
                rank=8, rows=30, batch=15, real_rows=4096):
    """The inner loop of TD3 (sequential-recommendation distillation; issue 51): SASRec with
    1 layer of dim 32 over MovieLens-100K's items, trained by torch.optim.Adam(lr 5e-3,
    weight_decay 5e-5, coupled L2) on batches of 15 of 30 soft sequences of 50 items whose
    logits are a Tucker product (core rank^3, factors for rows, positions and items), meta =
    the four factors; outer = the next-item loss on 4096 real training rows, as TD3's.
    Dropout 0, so float32 and float64 runs see the same model. Step t takes rows
    (t-1)*15 .. t*15 - 1 of the 30, cyclically."""
    task = load_task("ml-100k", data, max_len=50)
    torch.manual_seed(0)
    model = _finish(task.student(dim=32, heads=1, layers=1, dropout=0.0), dtype, widen, device,
                    train)
    g = torch.Generator().manual_seed(1)
    factor = lambda *shape: _data(g, dtype, widen, device, *shape).requires_grad_()  # noqa: E731
    core, codes = factor(rank, rank, rank), factor(rows, rank)
    positions, items = factor(51, rank), factor(model.vocab_size, rank)
    real_data = task.train_rows()
    real = real_data[torch.randperm(len(real_data), generator=g)[:real_rows]].to(device)
    padding_id = model.padding_id

    def loss_fn(f, t, core, codes, positions, items):
        chosen = (torch.arange(batch, device=device) + (t - 1) * batch) % rows
        logits = torch.einsum("abc,na,lb,vc->nlv", core, codes[chosen], positions, items)
        return soft_loss(f, logits.softmax(-1), padding_id, by_position=True)

    def outer_fn(f):
        return hard_loss(f, real, padding_id, by_position=True)

    return model, Problem(loss_fn, outer_fn, (core, codes, positions, items), 5e-3,
                          weight_decay=5e-5)


PROBLEMS = {"MLP": mlp_problem, "causal Transformer": transformer_problem}
# The examples' inner loops (examples/; TD3's, which reads ML-100K), each meant for its own
# optimizer: the digits ConvNet for momentum SGD, TD3's for Adam with coupled L2.
TD3 = "TD3 SASRec (ML-100K)"
EXAMPLES = {"digits ConvNet": digits_problem, TD3: td3_problem}
# The workload the engine exists for (issue 13), kept apart: they read the shared data.
WORKLOAD_DATASETS = {"SASRec distill (ML-100K)": "ml-100k", "LM distill (PTB)": "ptb"}
WORKLOADS = {name: functools.partial(distill_problem, dataset)
             for name, dataset in WORKLOAD_DATASETS.items()}
# the students that read the shared data, and which data set
DATA_NEEDED = {**WORKLOAD_DATASETS, TD3: "ml-100k"}
# Unrolled autograd, the baseline, keeps every step: MB per step in float32, rounded up from
# the CPU measurements (49 and 211 MB, results/.../engine-workloads.md; TD3's from higher's
# 2.2 GB at 40 steps and 5.1 GB at 200, issue 51); twice in float64.
UNROLLED_MB_PER_STEP = {"SASRec distill (ML-100K)": 50, "LM distill (PTB)": 230, TD3: 25}
# Half of the 24 GB benchmark machine, so a run leaves room for whatever else it runs beside;
# the benchmarks' --memory-budget-mb raises it for a run that has the machine to itself.
MEMORY_BUDGET_MB = 12_000


def unrolled_fits(problem_name: str, steps: int, dtype=torch.float32,
                  budget_mb: int = MEMORY_BUDGET_MB) -> bool:
    """Whether unrolled autograd on `problem_name` for `steps` steps fits `budget_mb`."""
    per_step = UNROLLED_MB_PER_STEP.get(problem_name, 0) * (dtype.itemsize // 4)
    return steps * per_step <= budget_mb


def _step_counts(text: str) -> list[int]:
    """An argparse type: comma-separated step counts, each a whole number >= 1."""
    try:
        return [positive(part) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected step counts like 10,50,100 (whole numbers "
                                         f">= 1), got {text!r}") from None


def add_options(parser: argparse.ArgumentParser, students: dict, steps: str, name: str,
                budget: str) -> None:
    """The options bench_engine and bench_anchors share: the students and step counts T to
    run, the data folder, the memory budget (`budget` says what it does there) and the
    report's name and folder. Read them back with `chosen_students`."""
    parser.add_argument("--steps", type=_step_counts, default=steps,
                        help=f"comma-separated step counts T (default: {steps})")
    parser.add_argument("--students", default=",".join(students),
                        help=f"comma-separated subset of: {', '.join(students)}")
    parser.add_argument("--data", default=None,
                        help="folder with ml-100k/ and ptb/ (default: FARZI_FAST_DATA)")
    parser.add_argument("--memory-budget-mb", type=positive, default=MEMORY_BUDGET_MB,
                        help=f"{budget} (default: {MEMORY_BUDGET_MB}, half of the 24 GB "
                             f"benchmark machine)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--name", default=name, help="report file name (NAME.md/.csv/.json)")


def task_or_refuse(parser: argparse.ArgumentParser, dataset: str, data=None, max_len=None):
    """The task `dataset` read from `data` (or FARZI_FAST_DATA); missing or unreadable data
    ends in the parser's one-line error naming --data."""
    try:
        return load_task(dataset, data, max_len)
    except (FileNotFoundError, ValueError) as error:
        parser.error(f"--data: {error}")


def chosen_students(parser: argparse.ArgumentParser, args, students: dict) -> list[str]:
    """--students as a list (an unknown one is refused by name), with --data handed on
    through the environment, where the workloads and any subprocess read it. A workload's
    missing data is refused here, before any other student has run."""
    if args.data:
        os.environ["FARZI_FAST_DATA"] = args.data
    chosen = args.students.split(",")
    unknown = [s for s in chosen if s not in students]
    if unknown:
        parser.error(f"unknown students {unknown}; choose from {list(students)}")
    for dataset in {DATA_NEEDED[s] for s in chosen if s in DATA_NEEDED}:
        task_or_refuse(parser, dataset)
    return chosen
