"""`farzi-fast train`: a student trained from scratch on the full data (every training event),
a random subset or a summary by the evaluation protocol, saved, and its test metrics printed."""

from __future__ import annotations

import json

from ...distillation.presets import Preset
from ...files import atomic_save
from ...student_spec import StudentSizes
from ...training import Recipe, fit_and_test, random_subset
from ..options import as_options, given
from ..sources import check_vocabulary, data_preset, identity, load_source, summary_of

STUDENT_FORMAT = "farzi_fast.student"


def student_settings(args, preset: Preset) -> dict:
    """The student's architecture and sizes: the options given, else the data's preset's."""
    sizes = preset.student.__dict__ | given(args, StudentSizes)
    return dict(sizes, architecture=args.architecture)


def run(args) -> int:
    preset = data_preset(args)
    max_len = args.max_len or preset.max_len
    settings = student_settings(args, preset)
    task = load_source(args, max_len)
    if args.on == "full":
        data = task.all_events()
    elif args.on == "last":
        data = task.train_rows()
    elif args.on == "random":
        data = random_subset(task.train_rows(), args.count, args.seed)
    else:
        if not args.farzi:
            raise ValueError("--on farzi needs --farzi RUN (a distill --out folder or its "
                             "farzi.pt)")
        farzi, path = summary_of(args.farzi)
        check_vocabulary(farzi, task, path)
        data = farzi.soft().detach()
    try:
        task.student(**settings)  # bad options refused before training
    except ValueError as error:
        raise as_options(error, settings) from None
    result = fit_and_test(lambda: task.student(**settings).to(args.device), data, task,
                          Recipe(lr=args.train_lr, max_steps=args.steps), seed=args.seed)
    atomic_save({"format": STUDENT_FORMAT, "dataset": identity(task), "max_len": task.max_len,
                 "student": settings, "state": result.student.state_dict()}, args.out)
    print(json.dumps({"student": args.out, "step": result.step, "valid": result.valid,
                      "test": result.test}))
    return 0
