"""The distillation table: students trained from scratch on a FarziData summary and on every
baseline by one protocol (farzi_fast.training.protocol: fixed recipe, checkpoint chosen on
validation, scored on test), for the architecture distilled with (SASRec / Transformer LM),
a GRU4Rec and a NextItNet-style CNN (the judge of summaries distilled with the first two).

    python -m benchmarks.bench_distill --dataset ml-100k --preset cpu --seeds 0 1 2 --out DIR
    python -m benchmarks.bench_distill --dataset ml-100k --variant latent8 --seeds 0 --out DIR

Every result is appended to DIR/distill-<dataset>-<preset>.jsonl as it comes and skipped when
already there, so a cut run continues where it stopped, a distillation from its last checkpoint
(DIR/farzi-*.ckpt, removed once its rows are in); the table (mean ± std over seeds, ratios to
the baselines) is rebuilt from that file each time.

    python -m benchmarks.bench_distill --dataset ml-100k --eval-lr 3e-3 --seeds 0 1 2 --out DIR

scores every source again with students trained at another learning rate (its own file,
distill-<dataset>-<preset>-eval-lr-<lr>.jsonl): a summary is data only if it teaches students
trained by recipes other than the one it was chosen by. `--judges` does the same with students
of other sizes than any run's (JUDGES; distill-<dataset>-<preset>-judges.jsonl). Summaries
already in DIR (farzi-*.pt) are scored, not distilled again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import tomllib
import torch

from farzi_fast import DistillConfig, RunOptions, distill
from farzi_fast.cli.options import non_negative, positive
from farzi_fast.data import load_interactions
from farzi_fast.distillation.budget import VALIDATION_USERS, fit_to_log, log_shape
from farzi_fast.distillation.presets import preset
from farzi_fast.distillation.start import initial_summary, pretrained_pool
from farzi_fast.distillation.summary import FarziData
from farzi_fast.files import atomic_save, safe_load
from farzi_fast.training import protocol, recommendation_task
from farzi_fast.training.metrics import score_recommendations
from farzi_fast.training.protocol import Recipe, fit, fit_and_test, popularity_summary
from farzi_fast.training.train import random_subset

from .report import write_report
from .students import task_or_refuse
from .timing import device_name, peak_resident_mb

# Evaluation students: the distilled architecture, a recurrent one and a convolutional one
# (a judge for summaries distilled with the first two).
EVAL_STUDENTS = {"transformer": dict(architecture="transformer"),
                 "gru": dict(architecture="gru", dim=64, layers=1),
                 "cnn": dict(architecture="cnn", dim=64, layers=2)}
# Judges (--judges): the three architectures at sizes no run distils or validates with,
# wider and deeper (the sizes the literature trains on full data), each scoring every source
# by the same recipe into its own results file: a summary is data only if students it was
# not chosen for learn from it as they learn from the real data.
JUDGES = {"transformer-128x3": dict(architecture="transformer", dim=128, heads=2, layers=3),
          "gru-128x2": dict(architecture="gru", dim=128, layers=2),
          "cnn-128x3": dict(architecture="cnn", dim=128, layers=3)}
# SASRecs of other sizes than the preset's and the judges', for inner loops only
INNER_SIZES = {"transformer-32x1": dict(architecture="transformer", dim=32, heads=1, layers=1),
               "transformer-96x3": dict(architecture="transformer", dim=96, heads=2, layers=3)}


def known_students() -> dict:
    """Every student a run or a table can name, by name: the panels as they are now."""
    return EVAL_STUDENTS | JUDGES | INNER_SIZES


# Variants of the presets, with why each was measured: research/variants.toml.
VARIANTS_FILE = Path(__file__).resolve().parent.parent / "research" / "variants.toml"
# keys of a variant that are not settings of the preset
VARIANT_ONLY = ("why", "loops", "students")


def _read_variants() -> tuple[dict, dict]:
    """(variants by name, loops by name -> family -> preset name -> settings)."""
    with open(VARIANTS_FILE, "rb") as f:
        table = tomllib.load(f)
    return table["variants"], table["loops"]


VARIANTS, LOOPS = _read_variants()


# The students that choose a run's summary start from other weights than the evaluation
# students that score it (fit() draws both from its seed): a summary kept because it suits
# one initialisation would otherwise be scored by that very initialisation.
VALIDATION_SEED_OFFSET = 500_009
# "full data": students on every training event (windows covering each once); the rows named
# "full data" hold each user's last max_len + 1 training events, the baseline of older tables
ALL_EVENTS = "full data: every training event"
EVALUATION = Recipe()  # every number in the table: one recipe for every data source
VALIDATION = protocol.VALIDATION  # scoring summaries mid-run
CHECKPOINT_EVERY = 5  # outer steps between a run's checkpoints (a few seconds each at most)


class Results:
    """Rows appended to a JSON-lines file as they come; a row already there is not redone."""

    def __init__(self, path: Path):
        self.path = path
        self.rows = ([json.loads(line) for line in path.read_text().splitlines() if line]
                     if path.exists() else [])

    def has(self, **key) -> bool:
        return any(all(r.get(k) == v for k, v in key.items()) for r in self.rows)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def student_factory(task, cfg, arch, device):
    kwargs = dict(dim=cfg["dim"], heads=cfg["heads"], layers=cfg["layers"],
                  dropout=cfg["dropout"]) | known_students()[arch]
    return lambda: task.student(**kwargs).to(device)


def evaluate_source(results, task, cfg, source, data, tokens, device, seed=0, **extra):
    for arch in cfg.get("eval_students", EVAL_STUDENTS):
        if results.has(source=source, arch=arch, seed=seed):
            continue
        start = time.perf_counter()
        result = fit_and_test(student_factory(task, cfg, arch, device), data, task,
                              cfg.get("eval_recipe", EVALUATION), seed)
        results.add(dict(source=source, arch=arch, seed=seed, tokens=tokens,
                         test=result.test, valid=result.valid, step=result.step,
                         seconds=round(time.perf_counter() - start, 1), **extra))


def baselines(results, task, cfg, device, draws: int, last_rows: bool = True):
    rows = task.train_rows()
    mu, xi = cfg["size"]
    if task.recommends:
        counts = task.data.item_counts()
        if not results.has(source="most popular (no model)"):
            metrics = {split: score_recommendations(
                lambda x: counts.float().expand(len(x), -1), None, task.data, split,
                task.max_len) for split in ("valid", "test")}
            results.add(dict(source="most popular (no model)", arch="-", seed=0, tokens=0,
                             test=metrics["test"], valid=metrics["valid"], step=0, seconds=0))
    else:
        counts = torch.bincount(task.data.train, minlength=task.data.vocab_size)
    every_event = task.all_events()
    for seed in range(draws):  # the denominators of "x all events" and "x last L": means too
        if task.recommends:  # a text's rows are all of it already
            evaluate_source(results, task, cfg, ALL_EVENTS, every_event,
                            real_tokens(task, every_event), device, seed=seed)
        if last_rows or not task.recommends:
            evaluate_source(results, task, cfg, "full data", rows, real_tokens(task, rows),
                            device, seed=seed)
    evaluate_source(results, task, cfg, "popularity summary",
                    popularity_summary(counts, mu, xi), mu * xi, device)
    for draw in range(draws):
        subset = random_subset(rows, mu, draw)[:, -(xi + 1):]
        evaluate_source(results, task, cfg, "random real sequences", subset,
                        real_tokens(task, subset), device, seed=draw)


def scored(results, cfg, source: str, seed: int) -> bool:
    """Whether every evaluation student's row of `source` and `seed` is in `results`."""
    return all(results.has(source=source, seed=seed, arch=a)
               for a in cfg.get("eval_students", EVAL_STUDENTS))


def real_tokens(task, rows: torch.Tensor) -> int:
    """Tokens in real rows: all of them for text, the non-padding ones for interactions."""
    return int((rows != task.padding_id).sum()) if task.recommends else rows.numel()


def run_label(cfg, variant: str, default_steps: int) -> str:
    """A run's name in the table: its variant, and its budget when not the preset's."""
    return variant if cfg["outer_steps"] == default_steps else \
        f"{variant}, {cfg['outer_steps']} outer steps"


def farzi_source(label: str) -> str:
    """The table's name for the summary of a run labelled `label` (see run_label)."""
    return "FarziData" if label == "default" else f"FarziData [{label}]"


def summary_stem(task, cfg, label: str, seed: int) -> str:
    """The file name (without suffix) of a run's summary, checkpoint and start in OUT. The
    presets share OUT and labels, so any preset but cpu (whose files came first) is named."""
    preset = "" if cfg["preset"] == "cpu" else f"-{cfg['preset']}"
    return f"farzi-{task.name}{preset}-{label.replace(', ', '-').replace(' ', '')}-seed{seed}"


def farzi_run(results, task, cfg, device, seed: int, variant: str, out: Path,
              default_steps: int):
    label = run_label(cfg, variant, default_steps)
    name = farzi_source(label)
    if scored(results, cfg, name, seed):
        return
    config = run_config(cfg, variant, seed)
    validate_every = VARIANTS[variant].get("validate_every", cfg["validate_every"])
    makes = [student_factory(task, cfg, arch, device)
             for arch in VARIANTS[variant].get("students", ("transformer",))]
    sign = 1.0 if task.higher_is_better else -1.0
    stem = summary_stem(task, cfg, label, seed)
    # a cut run continues from its last checkpoint (distill resumes exactly), and the start
    # it must still be scored against is kept beside it
    checkpoint, start_file = out / f"{stem}.ckpt", out / f"{stem}.start.pt"
    resumed = checkpoint.exists()  # then distill_seconds counts this process's part only

    validation_task = task.sample_users(VALIDATION_USERS, seed)  # as the command line's

    def validate(step, farzi):
        if step == 0:
            atomic_save({"soft": farzi.soft().detach().cpu()}, start_file)
        return statistics.mean(sign * fit(make, farzi.soft().detach(), validation_task,
                                          VALIDATION,
                                          seed + VALIDATION_SEED_OFFSET).valid[task.metric]
                               for make in makes)

    def progress(step, meta_loss, farzi):
        print(f"{name} seed {seed}: outer step {step}/{cfg['outer_steps']}, meta-loss "
              f"{meta_loss:.4f}, {time.perf_counter() - start:.0f} s", flush=True)

    mu, xi = cfg["size"]
    if (out / f"{stem}.pt").exists() and not resumed:  # distilled before: scored again as it is
        summary = FarziData.load(out / f"{stem}.pt", device)
        if not scored(results, cfg, start_source(label), seed):
            evaluate_source(results, task, cfg, start_source(label),
                            start_summary(task, cfg, device, seed, variant), mu * xi, device,
                            seed=seed)
        evaluate_source(results, task, cfg, name, summary.soft().detach(), mu * xi, device,
                        seed=seed, entropy=summary.entropy(), variant=variant)
        return
    start = time.perf_counter()
    torch.manual_seed(seed)
    students = [make() for make in makes]
    summary = distill(students, task.train_rows(), config,
                      RunOptions(device=device, checkpoint=checkpoint,
                                 checkpoint_every=CHECKPOINT_EVERY, resume=True),
                      validate=validate, validate_every=validate_every, callback=progress)
    seconds = round(time.perf_counter() - start, 1)
    summary.save(out / f"{stem}.pt")
    extra = dict(distill_seconds=seconds, selected_step=summary.selected_step,
                 peak_mb=round(peak_resident_mb()),  # of the process so far
                 entropy=summary.entropy(), variant=variant,
                 **({"resumed": True} if resumed else {}))
    start_soft = safe_load(start_file, "summary start")["soft"].to(device)
    evaluate_source(results, task, cfg, start_source(label), start_soft, mu * xi, device,
                    seed=seed)
    evaluate_source(results, task, cfg, name, summary.soft().detach(), mu * xi, device,
                    seed=seed, **extra)
    checkpoint.unlink()
    start_file.unlink()


# What a distilled summary teaches once `farzi-fast export` has written it out for another
# trainer: hard sequences (each position's most likely id, or one sample of it), or each
# position's K most likely ids with their probabilities (renormalised over the K).
EXPORTS = ("greedy", "sample", "top 10", "top 100")


def exported(summary: FarziData, how: str, seed: int) -> torch.Tensor:
    """The data a trainer reads from `summary` exported `how` (EXPORTS): μ × ξ ids, or
    μ × ξ × V distributions."""
    if how == "greedy":
        return summary.sample(greedy=True)
    if how == "sample":
        return summary.sample(torch.Generator().manual_seed(seed))
    soft = summary.soft().detach()
    kept = soft.topk(int(how.removeprefix("top ")), -1)
    truncated = torch.zeros_like(soft).scatter_(-1, kept.indices, kept.values)
    return truncated / truncated.sum(-1, keepdim=True)


def exports_run(results, task, cfg, device, seed: int, variant: str, out: Path,
                default_steps: int):
    """Students trained on every export of seed's stored summary of `variant`."""
    label = run_label(cfg, variant, default_steps)
    path = out / f"{summary_stem(task, cfg, label, seed)}.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no summary to export (distill it first: the same "
                                f"command without --exports)")
    summary = FarziData.load(path, device)
    name = farzi_source(label)
    for how in EXPORTS:
        data = exported(summary, how, seed)
        tokens = real_tokens(task, data) if data.dim() == 2 else cfg["size"][0] * cfg["size"][1]
        evaluate_source(results, task, cfg, f"{name} exported: {how}", data, tokens, device,
                        seed=seed)


START = "teacher-labelled start (0 outer steps)"


def start_source(label: str) -> str:
    """The table's name for the start of a run labelled `label` (a variant, and its budget
    when not the preset's): one name whether a full run or start_run measured it."""
    return START if label == "default" else f"start of [{label}]"


def start_run(results, task, cfg, device, seed: int, variant: str = "default"):
    """The teacher-labelled summary distill() would start seed's run from, evaluated without
    the outer loop (which moved nothing measurably at CPU budgets with the pool loops): a
    measurement of a preset's start at a fraction of a run's cost. Only the first pool
    student is pretrained: it alone makes the teacher, and it trains the same whether or not
    others follow it."""
    name = start_source(variant)
    if scored(results, cfg, name, seed):
        return
    mu, xi = cfg["size"]
    evaluate_source(results, task, cfg, name, start_summary(task, cfg, device, seed, variant),
                    mu * xi, device, seed=seed)


def start_summary(task, cfg, device, seed: int, variant: str) -> torch.Tensor:
    """The soft sequences seed's run of `variant` starts from (see start_run)."""
    torch.manual_seed(seed)
    student = student_factory(task, cfg, "transformer", device)()
    config = start_config(cfg, seed, variant)
    train = task.train_rows()
    pool = pretrained_pool(student, train, config)
    start = initial_summary(student, train.to(device), config, pool, None, student.vocab_size,
                            torch.Generator().manual_seed(seed))
    return start.soft().detach()


def variant_preset(dataset: str, name: str, variant: str) -> dict:
    """The preset `name` as `variant` changes it, as flat settings: over the loops it names
    (research/variants.toml) where the preset no longer loops that way."""
    spec = VARIANTS[variant]
    base = preset(dataset, name)
    if "loops" in spec:
        base = base.replace(**LOOPS[spec["loops"]].get(dataset, {}).get(name, {}))
    return base.settings()


def run_config(cfg, variant: str, seed: int) -> DistillConfig:
    """The DistillConfig of seed's run of `variant` over the settings `cfg`."""
    names = {f.name for f in dataclasses.fields(DistillConfig)}
    changes = {k: v for k, v in VARIANTS[variant].items() if k not in VARIANT_ONLY}
    return DistillConfig(**({k: v for k, v in cfg.items() if k in names} | changes
                            | dict(seed=seed)))


def start_config(cfg, seed: int, variant: str) -> DistillConfig:
    """The DistillConfig of a run's start, with one pretrained student (see start_run)."""
    return dataclasses.replace(run_config(cfg, variant, seed), pretrained_students=1)


def table(results, task) -> list[dict]:
    metric = task.metric
    groups = {}
    for r in results.rows:
        groups.setdefault((r["source"], r["arch"]), []).append(r)

    def mean(source, arch):
        rows = groups.get((source, arch))
        return statistics.mean(r["test"][metric] for r in rows) if rows else None

    out = []
    for (source, arch), rows in groups.items():
        values = [r["test"][metric] for r in rows]
        row = dict(source=source, student=arch, n=len(values), tokens=rows[0]["tokens"],
                   mean=statistics.mean(values),
                   std=statistics.stdev(values) if len(values) > 1 else 0.0)
        for base, key in ((ALL_EVENTS, "x_all"), ("full data", "x_full"),
                          ("random real sequences", "x_random"),
                          ("popularity summary", "x_popularity")):
            ref = mean(base, arch if arch != "-" else "transformer")
            if ref:
                row[key] = row["mean"] / ref if task.higher_is_better else ref / row["mean"]
        # rows of summaries distilled here; one scored from a stored file has no timing
        timed = [r for r in rows if "distill_seconds" in r]
        if timed:
            whole = [r for r in timed if not r.get("resumed")]  # a resumed run's time is a part
            if whole:
                row["distill_min"] = statistics.mean(r["distill_seconds"] for r in whole) / 60
            row["selected_step"] = "/".join(str(r["selected_step"]) for r in timed)
        out.append(row)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=["ml-100k", "ptb"])
    source.add_argument("--interactions", default=None,
                        help="an interaction log (any format `farzi-fast distill` reads), "
                             "distilled with the ml-100k preset fitted to its shape")
    parser.add_argument("--data", default=None)
    parser.add_argument("--preset", choices=["cpu", "paper"], default="cpu")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="default")
    parser.add_argument("--seeds", type=non_negative, nargs="+", default=[0, 1, 2])
    parser.add_argument("--draws", type=positive, default=3,
                        help="random subsets drawn, and full-data students trained (seeds)")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--no-last-rows", action="store_true",
                        help="skip the baseline of each user's last max_len + 1 events (on a "
                             "log of short histories it is the every-event one again)")
    parser.add_argument("--outer-steps", type=positive, default=None,
                        help="override the preset's (ablations at a shorter budget)")
    parser.add_argument("--threads", type=positive, default=None)
    parser.add_argument("--students", nargs="+", choices=sorted(EVAL_STUDENTS | JUDGES),
                        default=None, help="evaluation students (default: all of the panel)")
    parser.add_argument("--judges", action="store_true",
                        help="score every source with the judges (students of other sizes "
                             "than any run's) instead, into their own results file")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--start-only", action="store_true",
                      help="evaluate each seed's teacher-labelled start, no outer loop")
    what.add_argument("--exports", action="store_true",
                      help="train students on each seed's stored summary as `farzi-fast "
                           "export` writes it out: hard ids, or each position's top K")
    parser.add_argument("--table-only", action="store_true",
                        help="rebuild the table from OUT's JSON lines; run nothing")
    parser.add_argument("--eval-lr", type=float, default=EVALUATION.lr,
                        help="the evaluation students' learning rate (default: the recipe's "
                             f"{EVALUATION.lr:g}); another one gets its own results file")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if not args.eval_lr > 0:
        parser.error(f"--eval-lr must be a positive learning rate, got {args.eval_lr}")
    panel = JUDGES if args.judges else EVAL_STUDENTS
    if args.students and not set(args.students) <= set(panel):
        parser.error(f"--students must be among {sorted(panel)}"
                     f"{' with' if args.judges else ' without'} --judges, got {args.students}")
    if args.threads:
        torch.set_num_threads(args.threads)
    family = args.dataset or "ml-100k"
    cfg = variant_preset(family, args.preset, args.variant)
    if args.interactions:
        task = interactions_task(parser, args.interactions, cfg["max_len"])
        if args.preset == "cpu":  # as `farzi-fast distill` fits it
            shape = log_shape(task.data.train_sequences(), task.data.num_items,
                              VALIDATION_USERS)
            changes = {k: v for k, v in VARIANTS[args.variant].items()
                       if k not in VARIANT_ONLY}
            cfg = fit_to_log(preset(family, args.preset).replace(**(cfg | changes)),
                             shape, fixed=tuple(changes)).preset.settings()
    else:
        task = task_or_refuse(parser, args.dataset, args.data, cfg["max_len"])
    default_steps = cfg["outer_steps"]
    cfg["preset"] = args.preset
    cfg["eval_students"] = args.students or sorted(panel)
    if args.outer_steps:
        cfg["outer_steps"] = args.outer_steps
    cfg["eval_recipe"] = dataclasses.replace(EVALUATION, lr=args.eval_lr)
    name = f"distill-{task.name}-{args.preset}" + (
        "" if args.eval_lr == EVALUATION.lr else f"-eval-lr-{args.eval_lr:g}") + (
        "-judges" if args.judges else "")
    if args.table_only:  # e.g. while a long run is still adding rows
        rows = table(Results(Path(args.out) / f"{name}.jsonl"), task)
    else:
        rows = run(task, cfg, args.seeds, args.variant, args.draws, Path(args.out), name,
                   torch.device(args.device), with_baselines=not args.no_baselines,
                   default_steps=default_steps, start_only=args.start_only,
                   exports=args.exports, last_rows=not args.no_last_rows)
    note = ("preset: " + ", ".join(f"{k}={v}" for k, v in cfg.items()) +
            f"; evaluation students: {panel}")
    print(write_report(dict(device=device_name(torch.device(args.device)),
                            torch=torch.__version__,
                            config=cfg | dict(eval_recipe=dataclasses.asdict(cfg["eval_recipe"])),
                            rows=rows,
                            metric=task.metric), COLUMNS(task), name, args.out, note=note))


def interactions_task(parser: argparse.ArgumentParser, path: str, max_len: int):
    """The task of an interaction log, named after its file; a bad file ends in the
    parser's one-line error."""
    try:
        data = load_interactions(path)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    return recommendation_task(data, Path(path).stem, max_len)


def COLUMNS(task):
    return [("source", "trained on"), ("student", "student"), ("n", "runs"),
            ("tokens", "tokens"), ("mean", f"test {task.metric} mean"), ("std", "std"),
            ("x_all", "× all events"), ("x_full", "× last L events"), ("x_random", "× random"),
            ("x_popularity", "× popularity summary"), ("distill_min", "distill min"),
            ("selected_step", "step kept")]


def run(task, cfg, seeds, variant, draws, out: Path, name: str, device,
        with_baselines=True, default_steps=None, start_only=False,
        exports=False, last_rows=True) -> list[dict]:
    """Baselines, then a distillation per seed (or only its start, or students on its stored
    summary's exports), each result appended to OUT/NAME.jsonl; returns the table rows."""
    out.mkdir(parents=True, exist_ok=True)
    results = Results(out / f"{name}.jsonl")
    if with_baselines:
        baselines(results, task, cfg, device, draws, last_rows)
    for seed in seeds:
        if start_only:
            start_run(results, task, cfg, device, seed, variant)
        elif exports:
            exports_run(results, task, cfg, device, seed, variant, out,
                        default_steps or cfg["outer_steps"])
        else:
            farzi_run(results, task, cfg, device, seed, variant, out,
                      default_steps or cfg["outer_steps"])
    return table(results, task)

if __name__ == "__main__":
    main()
