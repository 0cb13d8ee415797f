"""The `farzi-fast` command line: distill, train, evaluate, export, inspect.

    farzi-fast distill  --dataset ml-100k --data ../shared/data --out runs/ml   # --preset cpu
    farzi-fast train    --dataset ml-100k --data ../shared/data --max-len 50 --on farzi \
                        --farzi runs/ml/farzi.pt --out runs/ml/student.pt
    farzi-fast evaluate --dataset ml-100k --data ../shared/data --student runs/ml/student.pt
    farzi-fast distill  --interactions my_log.csv --out runs/mine   # a user's own log
    farzi-fast export   runs/mine --format csv --top 100            # distributions, their ids
    farzi-fast inspect  runs/mine --interactions my_log.csv

Instead of --dataset, --interactions FILE reads an interaction log (CSV/TSV, Parquet or a
RecBole .inter file; see farzi_fast.farzi.interactions), distilled like MovieLens, and
--text TRAIN.txt a text corpus (words, or --tokenizer / --bpe-vocab tokens; see
farzi_fast.farzi.text), distilled like Penn Treebank.

A distill run writes into --out: config.json, log.jsonl (one JSON line per outer step with
its meta-loss; one per validation with the metric and the summary's entropy), checkpoint.pt
(atomic, every --checkpoint-every steps), farzi.pt (the summary, the best on validation) and
distill.png. `--resume` continues a killed run exactly where its last checkpoint left it, and
refuses a different configuration.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path

import torch

from ._checks import require_positive
from .farzi.distill import DistillConfig, changed_settings, distill
from .farzi.interactions import load_interactions
from .farzi.parallel import RankFailureError, RankMismatchError, Ranks
from .farzi.presets import preset
from .farzi.protocol import Recipe, fit, fit_and_test
from .farzi.files import atomic_save, safe_load
from .farzi.summary import FarziData
from .farzi.tasks import ARCHITECTURES, language_task, load_task, recommendation_task
from .farzi.text import load_text
from .farzi.train import random_subset

STUDENT_FORMAT = "farzi_fast.student"


_SIZE = re.compile(r"([1-9][0-9]*)x([1-9][0-9]*)", re.ASCII)


def _size(text: str) -> tuple[int, int]:
    match = _SIZE.fullmatch(text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"--size must look like 50x150 (sequences x length, "
                                         f"plain digits), got {text!r}")
    mu, xi = int(match[1]), int(match[2])
    if xi < 2:
        raise argparse.ArgumentTypeError(f"--size needs sequences of >= 2 items, got {text}")
    return mu, xi


def _count(minimum: int):
    """An argparse type: a plain decimal integer >= minimum (no signs, underscores or
    non-ASCII digits, which int() would accept)."""
    def parse(text: str) -> int:
        if not re.fullmatch(r"[0-9]+", text.strip(), re.ASCII) or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got "
                                             f"{text!r}")
        return int(text)
    return parse


positive, non_negative = _count(1), _count(0)


def _rate(text: str) -> float:
    """An argparse type: a finite number > 0 (a learning rate)."""
    try:  # float() and the library's own check of a rate refuse alike
        return require_positive("rate", float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}") from None


def _source(parser, required: bool = True):
    """Where the data comes from: a named data set, a user's interaction log, or a text."""
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument("--dataset", choices=["ml-100k", "ptb"])
    source.add_argument("--interactions", default=None, metavar="FILE",
                        help="an interaction log: CSV/TSV, Parquet or RecBole .inter")
    source.add_argument("--text", default=None, metavar="TRAIN.txt",
                        help="a text corpus, one sentence or paragraph per line")
    parser.add_argument("--data", default=None, help="data folder (default: $FARZI_FAST_DATA)")
    parser.add_argument("--valid", default=None, metavar="FILE",
                        help="validation text for --text (default: its last 5%% of lines)")
    parser.add_argument("--test", default=None, metavar="FILE",
                        help="test text for --text (default: the 5%% of lines before those)")
    parser.add_argument("--tokenizer", default=None, metavar="tokenizer.json",
                        help="a Hugging Face tokenizers file for --text (default: words)")
    parser.add_argument("--bpe-vocab", type=positive, default=None, metavar="N",
                        help="train a BPE tokenizer of N tokens on --text's training lines")
    parser.add_argument("--sep", default=None, help="delimiter of --interactions (default: "
                                                    "sniffed; tab for .inter)")
    for role in ("user", "item", "time"):
        parser.add_argument(f"--{role}-col", default=None,
                            help=f"{role} column of --interactions (default: {role}, "
                                 f"{role}_id, ...)")
    parser.add_argument("--title-col", default=None,
                        help="column of --interactions naming the items (kept for export)")


def load_source(args, max_len: int | None):
    """The task of --dataset, --interactions or --text; users an interaction log drops are
    counted."""
    if args.text is not None:
        data = load_text(args.text, args.valid, args.test, tokenizer=args.tokenizer,
                         bpe_vocab=args.bpe_vocab)
        return language_task(data, "text", max_len or 64)
    if args.interactions is None:
        return load_task(args.dataset, args.data, max_len)
    data = load_interactions(args.interactions, sep=args.sep, user_col=args.user_col,
                             item_col=args.item_col, time_col=args.time_col,
                             title_col=args.title_col)
    if data.dropped_users:
        print(f"farzi-fast: {args.interactions}: {data.dropped_users} users with fewer than 3 "
              f"interactions dropped", file=sys.stderr)
    return recommendation_task(data, "interactions", max_len or 200)


def _family(args) -> str:
    """The named data set whose presets fit: an interaction log is distilled like MovieLens,
    a text like Penn Treebank."""
    return args.dataset or ("ptb" if args.text else "ml-100k")


# the student's sizes: options of distill and train, which the data's preset fills when unset
STUDENT_SIZES = ("dim", "heads", "layers", "dropout")


def _fill_unset(args, values: dict, names) -> None:
    """Each option of `names` left unset (None) takes its value from `values`."""
    for name in names:
        if getattr(args, name) is None:
            setattr(args, name, values[name])


def _common(parser):
    """Data and student options; unset student sizes stay None for the data's preset to fill
    (`distill`: the chosen preset's; `train`: the cpu preset's, _preset_student)."""
    _source(parser)
    parser.add_argument("--max-len", type=positive, default=None,
                        help="sequence length of students (default: the preset's when "
                             "distilling; else 200 for recommendation data, 64 for text)")
    parser.add_argument("--architecture", choices=ARCHITECTURES, default="transformer",
                        help="student: the task's causal Transformer (SASRec), a GRU4Rec or a "
                             "NextItNet-style CNN (--layers blocks)")
    recommend, text = preset("ml-100k", "cpu"), preset("ptb", "cpu")
    for name in STUDENT_SIZES:
        parser.add_argument(f"--{name}", type=float if name == "dropout" else positive,
                            default=None,
                            help=f"default: the preset's (cpu: {recommend[name]}, for text "
                                 f"{text[name]})")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=non_negative, default=0)


def _student_args(args, architecture: str | None = None) -> dict:
    return dict(dim=args.dim, heads=args.heads, layers=args.layers, dropout=args.dropout,
                architecture=architecture or args.architecture)


def _student(task, args, architecture: str | None = None):
    """A fresh student as the options ask; a refusal names the options as typed."""
    settings = _student_args(args, architecture)
    try:
        return task.student(**settings)
    except ValueError as error:
        raise _as_options(error, settings) from None


def _architectures(args) -> list[str]:
    """The architectures a distillation trains its inner loops with, in turn: --architecture
    (which makes the teacher), then --also-students."""
    return [args.architecture, *args.also_students]


# the options a preset sets; an explicit value on the command line wins
PRESET_OPTIONS = ("max_len", *STUDENT_SIZES, "size", "latent_dim",
                  "inner_steps", "outer_steps", "inner_lr", "inner_eps", "outer_lr",
                  "outer_batch", "teacher_share", "uniform_share", "pretrained_students",
                  "pretrain_steps", "teacher_steps", "eval_every")


def _apply_preset(args) -> None:
    values = preset(_family(args), args.preset)
    if args.teacher_steps is None:  # the preset's, unless --pretrain-steps says otherwise
        args.teacher_steps = args.pretrain_steps or values["teacher_steps"]
    _fill_unset(args, values, PRESET_OPTIONS)
    if args.latent_dim == 0:
        args.latent_dim = None
    if args.max_len < 2:
        raise ValueError(f"--max-len must be >= 2, got {args.max_len}")
    if args.pretrained_students and args.teacher_steps < args.pretrain_steps:
        raise ValueError(f"--teacher-steps {args.teacher_steps} is less than --pretrain-steps "
                         f"{args.pretrain_steps}: the teacher is the first pretrained student, "
                         f"trained on")
    if args.size[1] > args.max_len:
        raise ValueError(f"--size {args.size[0]}x{args.size[1]} holds sequences longer than "
                         f"--max-len {args.max_len}: the students could not read them")
    architectures = _architectures(args)
    if len(set(architectures)) < len(architectures):
        raise ValueError(f"--also-students {' '.join(args.also_students)} repeats an "
                         f"architecture (--architecture {args.architecture}): name each once")


def validation_recipe(args) -> Recipe:
    """How the summary is scored during a run: a student trained from scratch on it, its
    best validation metric within --train-steps."""
    return Recipe(lr=args.train_lr, max_steps=args.train_steps,
                  eval_every=max(1, min(50, args.train_steps)), patience=4)


def cmd_distill(args) -> int:
    _apply_preset(args)
    ranks = Ranks.of()
    _check_settings(args)  # a bad setting is refused before any writing
    if args.meta_batch % ranks.world:
        raise ValueError(f"--meta-batch {args.meta_batch} is not divisible by the "
                         f"{ranks.world} processes: each runs the same number of inner loops")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the run")
    # what defines the run (device and verbosity may change on resume)
    config = {k: v for k, v in vars(args).items()
              if k not in ("func", "resume", "out", "quiet", "device", "timeout")}
    config["size"] = list(args.size)
    if not args.also_students:  # as runs written before the option existed (they resume)
        del config["also_students"]
    config["data"] = str(Path(args.data).resolve()) if args.data else None  # one spelling
    for name in ("interactions", "text", "valid", "test", "tokenizer"):  # one spelling
        if getattr(args, name):
            config[name] = str(Path(getattr(args, name)).resolve())
    config_file = out / "config.json"
    if config_file.exists():
        if not args.resume:
            raise ValueError(f"{out} already holds a run; pass --resume to continue it or "
                             f"choose another --out")
        try:
            saved = json.loads(config_file.read_text())
        except json.JSONDecodeError:
            raise ValueError(f"{config_file} is damaged (not JSON); start a new run in another "
                             f"--out") from None
        different = changed_settings(saved, config)
        if different:
            raise ValueError("refusing to resume with a different configuration: " + ", ".join(
                f"{k}: {a!r} -> {b!r}" for k, (a, b) in different.items()))
    task = load_source(args, args.max_len)  # fails before anything is written
    if args.interactions:
        config["dropped_users"] = task.data.dropped_users  # fewer than 3 interactions
    torch.manual_seed(args.seed)
    students = [_student(task, args, a) for a in _architectures(args)]
    rows = task.train_rows()
    ranks.barrier()  # every rank has checked the folder before rank 0 writes into it
    log_file, checkpoint = out / "log.jsonl", out / "checkpoint.pt"
    if not ranks.leader:  # the others compute, and read the checkpoint on --resume
        _distill(args, task, students, rows, checkpoint, on_step=None,
                 validate=_validated_on_rank_0 if args.eval_every else None)
        ranks.barrier()  # leave together, once rank 0 has written the run's files
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for orphan in out.glob(".*.tmp"):  # temporary files of writes a kill interrupted
        orphan.unlink()
    atomic_write_text(config_file, json.dumps(config, indent=2) + "\n")
    start_step = 0
    if args.resume and checkpoint.exists():
        start_step = safe_load(checkpoint, "distill checkpoint").get("step", 0)
    entries = []
    if log_file.exists():  # keep the log consistent with the checkpoint we resume from
        entries = [e for e in read_log(log_file) if e["step"] <= start_step]
    atomic_write_text(log_file, "".join(json.dumps(e) + "\n" for e in entries))

    from tqdm import tqdm

    bar = tqdm(total=args.outer_steps, initial=start_step, desc="distill", unit="step",
               file=sys.stderr, disable=args.quiet)
    # seconds count across resumes: this process starts where the kept log ends
    began = time.perf_counter() - max((e.get("seconds", 0.0) for e in entries), default=0.0)
    sign = 1.0 if task.higher_is_better else -1.0

    def write(entry):
        with open(log_file, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def validate(step, farzi):
        """A student of each architecture trained on the summary: their mean metrics."""
        each = {a: fit(lambda: _student(task, args, a).to(args.device),
                       farzi.soft().detach(), task, validation_recipe(args),
                       seed=args.seed).valid
                for a in _architectures(args)}
        valid = {k: statistics.mean(v[k] for v in each.values()) for k in next(iter(
            each.values()))}
        write({"step": step, "valid": valid, "entropy": farzi.entropy()} |
              ({"valid_each": each} if len(each) > 1 else {}))
        bar.set_postfix(valid=f"{valid[task.metric]:.4f}")
        return sign * valid[task.metric]

    def on_step(step, meta_loss, farzi):
        write({"step": step, "meta_loss": meta_loss,
               "seconds": round(time.perf_counter() - began, 3)})
        bar.set_postfix(meta_loss=f"{meta_loss:.4f}")
        bar.update(1)

    farzi = _distill(args, task, students, rows, checkpoint, on_step,
                     validate if args.eval_every else None)
    bar.close()
    farzi.describe(task.vocabulary, task.titles)  # the summary reads in the data's own ids
    farzi.save(out / "farzi.pt")
    plot_log(log_file, out / "distill.png", task.metric)
    print(json.dumps({"farzi": str(out / "farzi.pt"), "size": list(farzi.size),
                      "selected_step": farzi.selected_step}))
    ranks.barrier()
    return 0


def _validated_on_rank_0(step, farzi):
    """What the other ranks pass as `validate`: distill() calls it on rank 0 only."""
    raise AssertionError("validation runs on rank 0")


def _distill_settings(args) -> dict:
    """The DistillConfig fields the command line sets."""
    return dict(size=tuple(args.size), latent_dim=args.latent_dim,
                inner_steps=args.inner_steps, outer_steps=args.outer_steps,
                inner_lr=args.inner_lr, inner_eps=args.inner_eps, outer_lr=args.outer_lr,
                outer_batch=args.outer_batch, meta_batch=args.meta_batch,
                teacher_share=args.teacher_share, uniform_share=args.uniform_share,
                pretrained_students=args.pretrained_students,
                pretrain_steps=args.pretrain_steps, teacher_steps=args.teacher_steps,
                seed=args.seed, compile=args.compile, skip_nonfinite=args.skip_nonfinite)


def _check_settings(args) -> None:
    """distill()'s own check of the settings, its refusal naming the options as typed."""
    settings = _distill_settings(args)
    try:
        DistillConfig(**settings)
    except ValueError as error:
        raise _as_options(error, settings) from None


def _as_options(error: ValueError, names) -> ValueError:
    """`error` with the settings in `names` spelled as the command line's options."""
    message = str(error)
    for name in names:
        message = re.sub(rf"\b{name}\b", "--" + name.replace("_", "-"), message)
    return ValueError(message)


def _distill(args, task, students, rows, checkpoint, on_step, validate) -> FarziData:
    return distill(students, rows, **_distill_settings(args), device=args.device,
                   callback=on_step, checkpoint=checkpoint,
                   checkpoint_every=args.checkpoint_every, resume=args.resume,
                   validate=validate, validate_every=args.eval_every)


def start_processes(args) -> bool:
    """Under torchrun (WORLD_SIZE > 1 in the environment): join the process group, gloo on
    CPUs and nccl on GPUs, with a timeout on every collective so that a dead rank stops the
    others; share the cores (or take one GPU each). True when it joined one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 or torch.distributed.is_initialized():
        return False
    import datetime

    local = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if torch.device(args.device).type == "cuda":
        torch.cuda.set_device(local)
        args.device = f"cuda:{local}"
        backend = "nccl"
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        backend = "gloo"
    torch.distributed.init_process_group(
        backend, timeout=datetime.timedelta(seconds=args.timeout))
    return True


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_log(log_file: Path) -> list[dict]:
    """The entries of a run's log.jsonl. A torn last line (the run was killed while writing
    it) is dropped; a broken line before it means the file is damaged."""
    lines = [line for line in log_file.read_text().splitlines() if line.strip()]
    entries = []
    for number, line in enumerate(lines, start=1):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ValueError(f"{log_file}:{number} is not a JSON line; the log is damaged "
                             f"(move it away to resume without it)") from None
    return entries


def plot_log(log_file: Path, png: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = read_log(log_file)
    steps = [e for e in entries if "meta_loss" in e]
    valid = [e for e in entries if "valid" in e]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot([e["step"] for e in steps], [e["meta_loss"] for e in steps])
    ax1.set(xlabel="outer step", ylabel="meta-loss (real data)", title="meta-loss")
    ax2.plot([e["step"] for e in valid], [e["valid"][metric] for e in valid], marker="o")
    ax2.set(xlabel="outer step", ylabel=f"validation {metric}",
            title=f"student trained on the summary: {metric}")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def check_vocabulary(farzi: FarziData, task, path) -> None:
    """A summary trains students of the data it was distilled from: same vocabulary."""
    vocabulary = task.vocabulary
    size = len(vocabulary) if vocabulary is not None else task.student().vocab_size
    if farzi.vocab_size != size:
        raise ValueError(f"{path} has a vocabulary of {farzi.vocab_size} ids, the data {size}: "
                         f"it was distilled from other data")
    if farzi.vocabulary is not None and vocabulary is not None and farzi.vocabulary != vocabulary:
        first = next(i for i, (a, b) in enumerate(zip(farzi.vocabulary, vocabulary)) if a != b)
        raise ValueError(f"{path}: its id {first} is {farzi.vocabulary[first]!r}, the data's "
                         f"{vocabulary[first]!r}: it was distilled from other data")


def _identity(task) -> str:
    """What a saved student was trained on: the data set's name, or a digest of an
    interaction log's vocabulary."""
    if task.name not in ("interactions", "text"):
        return task.name
    import hashlib

    return f"{task.name}:" + hashlib.sha256("\n".join(task.vocabulary).encode()).hexdigest()[:16]


def _preset_student(args) -> None:
    """Student sizes not given take the data's cpu preset's: the student its tables score
    with (PTB's is not ML-100K's)."""
    _fill_unset(args, preset(_family(args), "cpu"), STUDENT_SIZES)


def cmd_train(args) -> int:
    _preset_student(args)
    task = load_source(args, args.max_len)
    rows = task.train_rows()
    if args.on == "full":
        data = rows
    elif args.on == "random":
        data = random_subset(rows, args.count, args.seed)
    else:
        if not args.farzi:
            raise ValueError("--on farzi needs --farzi PATH (a farzi.pt from `distill`)")
        farzi = FarziData.load(args.farzi)
        check_vocabulary(farzi, task, args.farzi)
        data = farzi.soft().detach()
    _student(task, args)  # bad options refused before training
    result = fit_and_test(lambda: _student(task, args).to(args.device), data,
                          task, Recipe(lr=args.train_lr, max_steps=args.steps), seed=args.seed)
    atomic_save({"format": STUDENT_FORMAT, "dataset": _identity(task), "max_len": task.max_len,
                 "student": _student_args(args), "state": result.student.state_dict()},
                args.out)
    print(json.dumps({"student": args.out, "step": result.step, "valid": result.valid,
                      "test": result.test}))
    return 0


def cmd_evaluate(args) -> int:
    saved = safe_load(args.student, "student")
    expected = {"format": str, "dataset": str, "max_len": int, "student": dict, "state": dict}
    if saved.get("format") != STUDENT_FORMAT or not all(
            isinstance(saved.get(k), t) for k, t in expected.items()):
        raise ValueError(f"{args.student} is not a farzi-fast student file (expected the "
                         f"keys {sorted(expected)})")
    task = load_source(args, saved["max_len"])
    if saved["dataset"] != _identity(task):
        raise ValueError(f"{args.student} was trained on {saved['dataset']}, not "
                         f"{_identity(task)}")
    try:
        student = task.student(**saved["student"])
        student.load_state_dict(saved["state"])
    except (TypeError, RuntimeError) as error:
        raise ValueError(f"{args.student}: its student settings or weights do not fit "
                         f"({str(error).splitlines()[0][:160]})") from None
    print(json.dumps({split: task.evaluate(student.to(args.device), split)
                      for split in ("valid", "test")}))
    return 0


def _summary_of(run) -> tuple[FarziData, Path]:
    """The summary of a run folder (RUN/farzi.pt) or a summary file."""
    path = Path(run)
    if path.is_dir():
        path = path / "farzi.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{run}: no summary there (expected a distill --out folder "
                                f"holding farzi.pt, or a farzi.pt file)")
    return FarziData.load(path), path


def export_rows(farzi: FarziData, draws: int | None = None, seed: int = 0,
                top: int | None = None) -> list[dict]:
    """The synthetic sequences as rows: each position's most likely id (sequence, draw,
    position, id, item, title, probability), `draws` samples of every sequence, or each
    position's `top` most likely ids (sequence, position, rank, id, ...). Only the last keeps
    what the summary teaches, its distributions: hard sequences teach about as much as the
    same number of random real ones (README)."""
    probs = farzi.soft().detach().cpu()
    if top is not None and top > probs.shape[-1]:
        raise ValueError(f"--top must be at most the summary's {probs.shape[-1]} ids, got {top}")
    names = farzi.vocabulary

    def row(sequence, position, token, **where):
        return {"sequence": sequence, **where, "position": position, "id": token,
                "item": names[token] if names else str(token),
                "title": farzi.titles[token] if farzi.titles else "",
                "probability": round(float(probs[sequence, position, token]), 6)}

    if top is not None:
        ranked = probs.topk(top, -1).indices
        return [row(sequence, position, token, rank=rank)
                for sequence, positions in enumerate(ranked.tolist())
                for position, tokens in enumerate(positions)
                for rank, token in enumerate(tokens)]
    if draws is None:
        ids = probs.argmax(-1).unsqueeze(0)
    else:
        generator = torch.Generator().manual_seed(seed)
        ids = torch.stack([farzi.sample(generator) for _ in range(draws)]).cpu()
    return [row(sequence, position, token, draw=draw)
            for draw, sample in enumerate(ids.tolist())
            for sequence, positions in enumerate(sample)
            for position, token in enumerate(positions)]


def cmd_export(args) -> int:
    farzi, _ = _summary_of(args.run)
    if not (args.greedy or args.sample or args.top):
        # the default stays one id per position (compact, for reading; --top 100 on the
        # paper preset is 750,000 rows), but hard ids teach a fraction of what the
        # distributions do: say so to whoever did not choose
        print("export: writing each position's most likely id (--greedy, the default); hard "
              "ids teach far less than the summary's distributions, which --top K keeps "
              "(README: 'The summary is soft data')", file=sys.stderr)
    rows = export_rows(farzi, None if args.greedy else args.sample, args.seed, args.top)
    if args.format == "jsonl":
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    if args.out:
        atomic_write_text(Path(args.out), text)
    else:
        sys.stdout.write(text)
    return 0


def popularity_comparison(farzi: FarziData, counts: torch.Tensor) -> dict:
    """How the summary spreads its mass over items compared with the real data: the share of
    each on the 10% most frequent real items, and the correlation of log frequencies."""
    mass = farzi.soft().detach().cpu().sum((0, 1))[1:].double()
    real = counts[1:].double()
    top = real.argsort(descending=True)[:max(1, len(real) // 10)]
    log_mass, log_real = (mass / mass.sum()).log(), (real + 1).log()
    correlation = torch.corrcoef(torch.stack([log_mass, log_real]))[0, 1]
    return {"summary_mass_on_top10pct": float(mass[top].sum() / mass.sum()),
            "real_mass_on_top10pct": float(real[top].sum() / real.sum()),
            "log_frequency_correlation": float(correlation)}


def cmd_inspect(args) -> int:
    farzi, path = _summary_of(args.run)
    task = load_source(args, None) if args.dataset or args.interactions or args.text else None
    if task is not None:
        check_vocabulary(farzi, task, path)
    probs = farzi.soft().detach().cpu()
    entropy = farzi.position_entropy().cpu()  # μ × ξ, NaN at padding (logits are finite)
    data = ~entropy.isnan()
    names = farzi.vocabulary or [str(i) for i in range(farzi.vocab_size)]
    label = (lambda i: f"{names[i]} ({farzi.titles[i]})" if farzi.titles and farzi.titles[i]
             else names[i])
    mu, xi = farzi.size
    print(f"{path}: {mu} sequences x {xi} positions over {farzi.vocab_size} ids; mean entropy "
          f"{float(entropy.nanmean()):.2f} nats (uniform: "
          f"{float(torch.tensor(farzi.vocab_size).log()):.2f})"
          + (f"; {int((~data).sum())} positions are padding (id {farzi.padding_id}), left out"
             if farzi.padding_id is not None else ""))
    for sequence in range(min(mu, args.sequences)):
        real = data[sequence]
        count = int(real.sum())
        mass = probs[sequence, real].sum(0)
        top = mass.argsort(descending=True)[:args.top].tolist()
        print(f"  sequence {sequence} ({count} positions): " + ", ".join(
            f"{label(i)} {float(mass[i]) / max(1, count):.3f}" for i in top))
    per_position = entropy.nanmean(0)  # NaN where every sequence is padding
    print("entropy per position (mean over sequences): " + " ".join(
        "-" if math.isnan(e) else f"{e:.2f}" for e in per_position.tolist()))
    comparison = None
    if task is not None and task.recommends:
        comparison = popularity_comparison(farzi, task.data.item_counts())
        print("popularity: " + ", ".join(f"{k} {v:.3f}" for k, v in comparison.items()))
    png = Path(args.png) if args.png else path.with_name("inspect.png")
    _plot_inspection(per_position, probs[data], png)
    print(json.dumps({"png": str(png), "popularity": comparison}))
    return 0


def _plot_inspection(entropy: torch.Tensor, probs: torch.Tensor, png: Path) -> None:
    """`entropy`: the mean per position (NaN where every sequence is padding, left as a gap);
    `probs`: the distributions of the positions that are not padding (N × V)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot(entropy.numpy(), marker="o")
    ax1.set(xlabel="position", ylabel="entropy (nats)", title="entropy per position")
    mass = probs.sum(0)
    ax2.plot(mass.sort(descending=True).values.numpy() / float(mass.sum()))
    ax2.set(xscale="log", yscale="log", xlabel="id rank", ylabel="share of the summary's mass",
            title="how the summary spreads its mass")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Appends an option's default to its help where there is one to show: not None (unset:
    the preset's, or the data's, which the help says in words) and not where the help
    already gives the default itself."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farzi-fast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    helpful = _DefaultsHelp

    d = sub.add_parser("distill", help="distill a data set into a FarziData summary",
                       formatter_class=helpful)
    # argparse takes "-3x4" for an option unless it looks like a negative number to it: let
    # it reach --size's own check, which names the problem.
    d._negative_number_matcher = re.compile(r"^-\d+(\.\d*)?$|^-\d+x\d+$")
    _common(d)
    d.add_argument("--also-students", nargs="+", choices=ARCHITECTURES, default=[],
                   metavar="ARCH",
                   help="further architectures the inner loops take turns with, each with "
                        "the same --dim/--layers/--dropout (validation averages them all): a "
                        "summary for more than one architecture, e.g. --also-students gru")
    d.add_argument("--preset", choices=["cpu", "paper"], default="cpu",
                   help="cpu: 50x20, < 30 min on 2 cores; paper: the paper's sizes (its CPU "
                        "time is in the README); explicit options override it")
    d.add_argument("--out", required=True)
    d.add_argument("--size", type=_size, default=None, help="μxξ, e.g. 50x150")
    d.add_argument("--latent-dim", type=non_negative, default=None,
                   help="factorised summary Z·M of this rank; 0: μ×ξ×V logits directly")
    d.add_argument("--inner-steps", type=positive, default=None)
    d.add_argument("--outer-steps", type=positive, default=None)
    d.add_argument("--inner-lr", type=float, default=None)
    d.add_argument("--inner-eps", type=float, default=None,
                   help="eps of the inner loops' Adam (default: the preset's)")
    d.add_argument("--outer-lr", type=float, default=None)
    d.add_argument("--outer-batch", type=positive, default=None)
    d.add_argument("--teacher-share", type=float, default=None,
                   help="teacher's share of each initial position's distribution (0..1)")
    d.add_argument("--uniform-share", type=float, default=None,
                   help="share of each initial position's distribution spread evenly over "
                        "the items (0..1): room for the outer loop above the teacher's labels, "
                        "and a softmax it can move in one-hot rows (--teacher-share 0)")
    d.add_argument("--pretrained-students", type=non_negative, default=None,
                   help="students trained on the real data whose checkpoints start the inner "
                        "loops (0: every loop starts from one fresh initialisation)")
    d.add_argument("--pretrain-steps", type=non_negative, default=None,
                   help="steps each pretrained student trains on the real data (0: the inner "
                        "loops start from fresh initialisations, as the students that are "
                        "later trained on the summary do)")
    d.add_argument("--teacher-steps", type=positive, default=None,
                   help="training steps of the teacher that labels the start: the first "
                        "pretrained student, trained on (>= --pretrain-steps; default: the "
                        "preset's, or --pretrain-steps when that is given and not 0)")
    d.add_argument("--checkpoint-every", type=non_negative, default=10)
    d.add_argument("--eval-every", type=non_negative, default=None,
                   help="validate the summary every N outer steps and keep the best (0: off, "
                        "the last summary is kept)")
    d.add_argument("--train-steps", type=positive, default=600,
                   help="most steps of the students that validate the summary")
    d.add_argument("--train-lr", type=_rate, default=1e-3)
    d.add_argument("--meta-batch", type=positive, default=DistillConfig.meta_batch,
                   help="inner loops averaged per outer step; under torchrun split over the "
                        "processes (must divide by their number)")
    d.add_argument("--compile", action="store_true",
                   help="run the inner loops' steps as torch.compile'd functions: faster "
                        "after a one-off compilation (~1 min; needs a C++ compiler on CPUs), "
                        "rounded differently, so a run resumes only with the same choice")
    d.add_argument("--skip-nonfinite", type=non_negative,
                   default=DistillConfig.skip_nonfinite, metavar="N",
                   help="outer steps in a row whose meta-gradient may come out not finite (a "
                        "rare float32 rounding event) and be skipped, with a warning, before "
                        "the run stops")
    d.add_argument("--timeout", type=positive, default=600,
                   help="seconds a process waits for the others under torchrun before it "
                        "stops with an error")
    d.add_argument("--resume", action="store_true")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_distill)

    t = sub.add_parser("train", help="train a student on the full data, a random subset or "
                                     "a summary, save it and print its test metrics",
                       formatter_class=helpful)
    _common(t)
    t.add_argument("--on", choices=["full", "random", "farzi"], default="full")
    t.add_argument("--farzi", default=None)
    t.add_argument("--count", type=positive, default=50, help="rows of the random subset")
    t.add_argument("--steps", type=positive, default=1500,
                   help="most training steps; the checkpoint best on validation is kept")
    t.add_argument("--train-lr", type=_rate, default=1e-3)
    t.add_argument("--out", required=True)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="metrics of a saved student on valid and test",
                       formatter_class=helpful)
    _source(e)
    e.add_argument("--student", required=True)
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=cmd_evaluate)

    x = sub.add_parser("export", help="a summary's synthetic sequences in the data's own ids",
                       formatter_class=helpful)
    x.add_argument("run", help="a distill --out folder, or a farzi.pt")
    x.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    how = x.add_mutually_exclusive_group()
    how.add_argument("--greedy", action="store_true",
                     help="each position's most likely id (the default)")
    how.add_argument("--sample", type=positive, default=None, metavar="K",
                     help="K sampled versions of every sequence")
    how.add_argument("--top", type=positive, default=None, metavar="K",
                     help="each position's K most likely ids with their probabilities, one row "
                          "each: the summary's distributions, which is what teaches (hard "
                          "sequences teach about as much as random real ones)")
    x.add_argument("--seed", type=non_negative, default=0)
    x.add_argument("--out", default=None, help="file to write (default: standard output)")
    x.set_defaults(func=cmd_export, device="cpu")

    i = sub.add_parser("inspect", help="a short human summary of a summary, and a PNG",
                       formatter_class=helpful)
    i.add_argument("run", help="a distill --out folder, or a farzi.pt")
    _source(i, required=False)  # optional: the data to check the vocabulary and compare with
    i.add_argument("--top", type=positive, default=5, help="items shown per sequence")
    i.add_argument("--sequences", type=positive, default=10, help="sequences shown")
    i.add_argument("--png", default=None, help="default: inspect.png beside the summary")
    i.set_defaults(func=cmd_inspect, device="cpu")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    joined = False
    try:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: this machine has no CUDA GPU "
                             f"(use --device cpu)")
        if args.command == "distill":
            joined = start_processes(args)
        code = args.func(args)
    except (ValueError, FileNotFoundError, TypeError, FloatingPointError,
            RankMismatchError) as error:
        print(f"farzi-fast: error: {error}", file=sys.stderr)
        code = 2
    except RankFailureError as error:  # not the user's input: the run may be resumed
        print(f"farzi-fast: error: {error}; resume from the last checkpoint with --resume",
              file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("farzi-fast: interrupted (a distill run continues from its last checkpoint "
              "with --resume)", file=sys.stderr)
        code = 130
    except BaseException:  # a bug: its traceback is the report
        if joined:
            torch.distributed.destroy_process_group()
        raise
    if joined:
        leave_processes(code)
    return code


def leave_processes(code: int) -> None:
    """End a rank of a torchrun job: leave the process group, then the process, without the
    interpreter's teardown. On 2 busy cores about 1 two-rank run in 6 aborted there, after its
    work was done and saved (SIGABRT, "terminate called without an active exception", no
    Python frame left: a gloo thread outliving the interpreter), and torchrun then reports the
    whole job failed; with this exit none did in 61 runs (benchmarks/NOTES.md, session 6)."""
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
