"""`farzi-fast distill`: a preset, changed by the options given, distilled into a run folder:
config.json (every setting), log.jsonl (a line per outer step and per validation),
checkpoint.pt (atomic, for --resume), farzi.pt (the summary) and distill.png."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from pathlib import Path

import torch

from ...data import RecommendationData
from ...distillation.budget import fit_to_log, log_shape
from ...distillation.checkpoint import changed_settings
from ...distillation.config import DistillConfig, RunOptions
from ...distillation.cost import available_bytes, peak_bytes
from ...distillation.outer_loop import distill
from ...distillation.parallel import Ranks
from ...distillation.presets import Preset
from ...distillation.probe import expected_seconds
from ...distillation.reports import plot_log
from ...files import atomic_write_text, read_jsonl, safe_load
from ...student_spec import StudentSizes
from ...training import VALIDATION, fit
from ..options import as_options, given, option
from ..progress import Progress
from ..sources import data_preset, load_source

RUN_FORMAT = 2  # of config.json: a run folder of another format is refused on --resume


def given_settings(args) -> dict:
    """The settings given on the command line, name -> value (the seed always)."""
    changes = given(args, DistillConfig, skip=("seed",)) | given(args, StudentSizes)
    changes |= {k: getattr(args, k) for k in ("max_len", "validate_every")
                if getattr(args, k) is not None}
    return changes


def chosen_preset(args) -> Preset:
    """The data's preset `--preset`, with every setting given on the command line."""
    changes = given_settings(args)
    changes["seed"] = args.seed
    if changes.get("pretrain_steps") and "teacher_steps" not in changes:
        # the teacher is the first pretrained student as trained, unless told otherwise
        changes["teacher_steps"] = changes["pretrain_steps"]
    base = data_preset(args, args.preset)
    try:
        chosen = base.replace(**changes)
    except ValueError as error:
        raise as_options(error, base.settings()) from None
    architectures = [args.architecture, *args.also_students]
    if len(set(architectures)) < len(architectures):
        raise ValueError(f"--also-students {' '.join(args.also_students)} repeats an "
                         f"architecture (--architecture {args.architecture}): name each once")
    return chosen


def fitted_to_log(args, chosen: Preset, task) -> tuple[Preset, str | None]:
    """The `cpu` preset fitted to the shape of the user's interaction log
    (`budget.fit_to_log`), each setting unless given on the command line; with a line
    saying what was chosen (None when nothing was fitted). The named data sets (`--dataset`)
    keep the settings their results were measured with."""
    if args.preset != "cpu" or args.interactions is None or \
            not isinstance(task.data, RecommendationData):
        return chosen, None
    shape = log_shape(task.data.train_sequences(), task.data.num_items,
                      args.validation_users)
    given_names = set(given_settings(args))
    if "pretrain_steps" in given_names:  # the teacher is then the pretrained student
        given_names.add("teacher_steps")
    fitted = fit_to_log(chosen, shape, fixed=tuple(given_names))
    if not fitted.changed:
        return chosen, None
    before = chosen.settings()
    changes = ", ".join(f"{option(name)} {before[name]} -> {value}"
                        for name, value in fitted.changed.items())
    return fitted.preset, (
        f"preset cpu fitted to this log: {changes}; about {fitted.expected / 60:.0f} min on "
        f"2 cores against a budget of {fitted.budget / 60:.0f} min (an option given keeps "
        f"its value)")


def run_settings(args, chosen: Preset) -> dict:
    """What defines the run, for config.json: every setting, the data and the validation
    recipe (device and verbosity may change on resume)."""
    settings = {"run_format": RUN_FORMAT, **chosen.settings(), "preset": args.preset,
                "architectures": [args.architecture, *args.also_students],
                "train_steps": args.train_steps, "train_lr": args.train_lr,
                "validation_users": args.validation_users}
    for name in ("dataset", "data", "interactions", "text", "valid", "test", "tokenizer",
                 "bpe_vocab", "format", "sep", "user_col", "item_col", "time_col", "title_col"):
        value = getattr(args, name)
        # one spelling of a path
        settings[name] = str(Path(value).resolve()) if value and name in (
            "data", "interactions", "text", "valid", "test", "tokenizer") else value
    return settings


def check_folder(out: Path, settings: dict, resume: bool) -> None:
    """Refuse a file as --out, a run already there without --resume, and a resume with
    other settings."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the run")
    config_file = out / "config.json"
    if not config_file.exists():
        return
    if not resume:
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose "
                         f"another --out")
    try:
        saved = json.loads(config_file.read_text())
    except json.JSONDecodeError:
        raise ValueError(f"{config_file} is damaged (not JSON); start a new run in another "
                         f"--out") from None
    if saved.get("run_format") != RUN_FORMAT:
        raise ValueError(f"{out} was written by an older farzi-fast (run format "
                         f"{saved.get('run_format', 1)}); start a new run in another --out")
    saved.pop("dropped_users", None)  # derived from the data, which its path names
    different = changed_settings(saved, settings)
    if different:
        raise ValueError("refusing to resume with a different configuration: " + ", ".join(
            f"{k}: {a!r} -> {b!r}" for k, (a, b) in different.items()))


def run(args) -> int:
    chosen = chosen_preset(args)
    ranks = Ranks.of()
    try:
        chosen.config.check_processes(ranks.world)
    except ValueError as error:
        raise as_options(error, ["meta_batch"]) from None
    out = Path(args.out)
    task = load_source(args, chosen.max_len)  # fails before anything is written
    chosen, fitting = fitted_to_log(args, chosen, task)
    settings = run_settings(args, chosen)
    check_folder(out, settings, args.resume)
    check_fits(task, chosen)
    if isinstance(task.data, RecommendationData) and args.interactions:
        settings["dropped_users"] = task.data.dropped_users  # fewer than 3 interactions
    torch.manual_seed(args.seed)
    architectures = settings["architectures"]
    sizes = chosen.student

    def make(architecture):
        """A fresh student; a refusal names the options as typed."""
        try:
            return task.student(**dataclasses.asdict(sizes), architecture=architecture)
        except ValueError as error:
            raise as_options(error, dataclasses.asdict(sizes)) from None

    students = [make(a) for a in architectures]
    rows = task.train_rows()
    checkpoint = out / "checkpoint.pt"
    options = RunOptions(device=args.device, checkpoint=checkpoint,
                         checkpoint_every=args.checkpoint_every, resume=args.resume,
                         skip_nonfinite=args.skip_nonfinite)
    validate_every = chosen.validate_every
    ranks.barrier()  # every rank has checked the folder before rank 0 writes into it
    if not ranks.leader:  # the others compute, and read the checkpoint on --resume
        distill(students, rows, chosen.config, options,
                validate=_validated_on_rank_0 if validate_every else None,
                validate_every=validate_every)
        ranks.barrier()  # leave together, once rank 0 has written the run's files
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for orphan in out.glob(".*.tmp"):  # temporary files of writes a kill interrupted
        orphan.unlink()
    atomic_write_text(out / "config.json", json.dumps(settings, indent=2) + "\n")
    log = RunLog(out / "log.jsonl", checkpoint if args.resume else None)
    shown = Progress(args.quiet, chosen.config.outer_steps, log.start_step)
    if fitting is not None:
        shown.note(fitting)
    shown.note(describe_run(task, chosen, args))
    recipe = dataclasses.replace(VALIDATION, lr=args.train_lr, max_steps=args.train_steps,
                                 eval_every=min(VALIDATION.eval_every, args.train_steps))
    # the users a validation ranks: a fixed sample of a large log (reported numbers come
    # from `farzi-fast train`/`evaluate`, which rank every user)
    validation_task = task.sample_users(args.validation_users, seed=args.seed)
    sign = 1.0 if task.higher_is_better else -1.0

    if not args.quiet:  # the probe takes seconds; a quiet run has no one to tell
        shown.note(expected_line(students, rows, chosen, recipe, log.start_step,
                                 len(architectures), validation_task))

    def validate(step, farzi):
        """A student of each architecture trained on the summary: their mean metrics."""
        each = {}
        for architecture in architectures:
            shown.validation(step, recipe.max_steps)
            each[architecture] = fit(lambda a=architecture: make(a).to(args.device),
                                     farzi.soft().detach(), validation_task, recipe,
                                     seed=args.seed, on_step=shown.validation_step).valid
        valid = {k: statistics.mean(v[k] for v in each.values())
                 for k in next(iter(each.values()))}
        log.write({"step": step, "valid": valid, "entropy": farzi.entropy()} |
                  ({"valid_each": each} if len(each) > 1 else {}))
        shown.validated(task.metric, valid[task.metric])
        return sign * valid[task.metric]

    def on_step(step, meta_loss, farzi):
        log.write({"step": step, "meta_loss": meta_loss, "seconds": log.seconds()})
        shown.outer_step(meta_loss)

    try:
        farzi = distill(students, rows, chosen.config, options,
                        validate=validate if validate_every else None,
                        validate_every=validate_every, callback=on_step, progress=shown)
    finally:
        shown.close()
    farzi.describe(task.vocabulary, task.titles)  # the summary reads in the data's own ids
    farzi.save(out / "farzi.pt")
    plot_log(out / "log.jsonl", out / "distill.png", task.metric)
    print(json.dumps({"farzi": str(out / "farzi.pt"), "size": list(farzi.size),
                      "selected_step": farzi.selected_step}))
    ranks.barrier()
    return 0


def check_fits(task, chosen: Preset) -> None:
    """Refuse, before anything runs, a log with fewer users than the summary has sequences
    and a run whose estimated peak memory exceeds what the machine has available."""
    mu, xi = chosen.config.size
    if task.recommends and task.data.num_users < mu:
        raise ValueError(f"--size {mu}x{xi} asks for {mu} synthetic sequences but the log has "
                         f"{task.data.num_users} users with 3 or more events: lower --size")
    vocab = task.vocab_size
    need, have = peak_bytes(chosen.config, chosen.max_len, vocab), available_bytes()
    if have is not None and need > have:
        raise ValueError(f"this run needs about {need / 1e9:.1f} GB at its peak (summary "
                         f"{mu}x{xi} over {vocab} items, --outer-batch "
                         f"{chosen.config.outer_batch}, --max-len {chosen.max_len}) and "
                         f"{have / 1e9:.1f} GB are available: lower --outer-batch, --size or "
                         f"--max-len")


def describe_run(task, chosen: Preset, args) -> str:
    """One line: the data's shape and what the run will do with it."""
    config = chosen.config
    mu, xi = config.size
    if task.recommends:
        data = (f"{task.data.num_users} users, {task.data.num_items} items, "
                f"{sum(len(s) for s in task.data.sequences)} events")
        ranked = min(args.validation_users, task.data.num_users)
        validation = f"validation every {chosen.validate_every} outer steps on {ranked} users"
    else:
        data = f"{task.data.vocab_size} tokens in the vocabulary"
        validation = f"validation every {chosen.validate_every} outer steps"
    vocab = task.vocab_size
    memory = peak_bytes(config, chosen.max_len, vocab) / 1e9
    return (f"distill: {data}; preset {args.preset}: {mu}x{xi} summary, "
            f"{config.outer_steps} outer steps of {config.meta_batch} x {config.inner_steps} "
            f"inner steps, teacher {config.teacher_training_steps} steps, "
            f"{validation if chosen.validate_every else 'no validation'}; about "
            f"{memory:.1f} GB at the peak")


def expected_line(students, rows, chosen: Preset, recipe, done: int, architectures: int,
                  validation_task) -> str:
    """How long the rest of the run should take on this machine (`probe.expected_seconds`)."""
    config = chosen.config
    fresh = done == 0
    start_steps = 0
    if fresh:
        start_steps = config.pretrained_students * config.pretrain_steps * len(students)
        if config.init == "teacher" and config.teacher_share > 0:
            start_steps += config.teacher_training_steps - (
                config.pretrain_steps if config.pretrained_students else 0)
    every = chosen.validate_every
    validations = 0
    if every:
        validations = int(fresh) + sum(1 for s in range(done + 1, config.outer_steps + 1)
                                       if s % every == 0 or s == config.outer_steps)
    expected = expected_seconds(
        students[0], rows, config, teacher_steps=start_steps,
        outer_steps=config.outer_steps - done, validations=validations,
        validation_steps=architectures * recipe.max_steps,
        evaluations=architectures * math.ceil(recipe.max_steps / recipe.eval_every),
        rank_once=lambda model: validation_task.evaluate(model, "valid"))
    return (f"expected on this machine: about {_duration(expected.total)} (start "
            f"{_duration(expected.teacher)}, outer steps {_duration(expected.outer_loop)}, "
            f"validations up to {_duration(expected.validation)})")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class RunLog:
    """A run's log.jsonl, kept consistent with the checkpoint a run resumes from: entries
    after its step are dropped, and seconds count on from the kept entries'."""

    def __init__(self, path: Path, checkpoint: Path | None):
        self.path = path
        self.start_step = 0
        if checkpoint is not None and checkpoint.exists():
            self.start_step = safe_load(checkpoint, "distill checkpoint").get("step", 0)
        entries = []
        if checkpoint is not None and path.exists():
            entries = [e for e in read_jsonl(path) if e["step"] <= self.start_step]
        atomic_write_text(path, "".join(json.dumps(e) + "\n" for e in entries))
        self.began = time.perf_counter() - max((e.get("seconds", 0.0) for e in entries),
                                               default=0.0)

    def seconds(self) -> float:
        return round(time.perf_counter() - self.began, 3)

    def write(self, entry: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")


def _validated_on_rank_0(step, farzi):
    """What the other ranks pass as `validate`: distill() calls it on rank 0 only."""
    raise AssertionError("validation runs on rank 0")
