"""The data a command reads (--dataset, --interactions or --text) as a task, and the checks
that a saved summary or student belongs to it."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from ..data import load_interactions, load_text
from ..distillation.presets import Preset, preset
from ..distillation.summary import FarziData
from ..training import Task, language_task, load_task, recommendation_task


def family(args) -> str:
    """The named data set whose presets fit: an interaction log is distilled like MovieLens,
    a text like Penn Treebank."""
    return args.dataset or ("ptb" if args.text else "ml-100k")


def data_preset(args, name: str = "cpu") -> Preset:
    """The data family's preset `name`."""
    return preset(family(args), name)


def load_source(args, max_len: int) -> Task:
    """The task of --dataset, --interactions or --text at the students' length `max_len`;
    users an interaction log drops are counted on stderr."""
    if args.text is not None:
        text = load_text(args.text, args.valid, args.test, tokenizer=args.tokenizer,
                         bpe_vocab=args.bpe_vocab)
        return language_task(text, "text", max_len)
    if args.interactions is None:
        return load_task(args.dataset, args.data, max_len)
    data = load_interactions(args.interactions, format=args.format, sep=args.sep,
                             user_col=args.user_col,
                             item_col=args.item_col, time_col=args.time_col,
                             title_col=args.title_col)
    if data.dropped_users:
        print(f"farzi-fast: {args.interactions}: {data.dropped_users} users with fewer than 3 "
              f"interactions dropped", file=sys.stderr)
    return recommendation_task(data, "interactions", max_len)


def identity(task: Task) -> str:
    """What a saved student was trained on: the data set's name, or a digest of a user's
    log's or text's vocabulary."""
    if task.name not in ("interactions", "text"):
        return task.name
    names = "\n".join(task.vocabulary or [])
    return f"{task.name}:" + hashlib.sha256(names.encode()).hexdigest()[:16]


def summary_of(run) -> tuple[FarziData, Path]:
    """The summary of a run folder (RUN/farzi.pt) or a summary file."""
    path = Path(run)
    if path.is_dir():
        path = path / "farzi.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{run}: no summary there (expected a distill --out folder "
                                f"holding farzi.pt, or a farzi.pt file)")
    return FarziData.load(path), path


def check_vocabulary(farzi: FarziData, task: Task, path) -> None:
    """A summary trains students of the data it was distilled from: same vocabulary."""
    vocabulary = task.vocabulary
    size = len(vocabulary) if vocabulary is not None else task.vocab_size
    if farzi.vocab_size != size:
        raise ValueError(f"{path} has a vocabulary of {farzi.vocab_size} ids, the data {size}: "
                         f"it was distilled from other data")
    if farzi.vocabulary is not None and vocabulary is not None and farzi.vocabulary != vocabulary:
        first = next(i for i, (a, b) in enumerate(zip(farzi.vocabulary, vocabulary)) if a != b)
        raise ValueError(f"{path}: its id {first} is {farzi.vocabulary[first]!r}, the data's "
                         f"{vocabulary[first]!r}: it was distilled from other data")
