"""The command line's arguments, one function per command. No torch import: `farzi-fast
--help` answers without loading the package's compute layers."""

from __future__ import annotations

import argparse
import re
from typing import Any

from ..distillation.budget import VALIDATION_USERS
from ..distillation.config import DistillConfig, RunOptions, field_metadata
from ..distillation.presets import NAMES, preset
from ..student_spec import ARCHITECTURES, StudentSizes
from .options import add_fields, non_negative, positive, rate

Subparsers = Any  # argparse's _SubParsersAction, private

DESCRIPTION = """Farzi data distillation from the command line: distill a data set into a few
soft synthetic sequences, train and evaluate students on it, export and inspect it.

  farzi-fast distill  --dataset ml-100k --data ../shared/data --out runs/ml
  farzi-fast train    --dataset ml-100k --data ../shared/data --on farzi --farzi runs/ml \\
                      --out runs/ml/student.pt
  farzi-fast evaluate --dataset ml-100k --data ../shared/data --student runs/ml/student.pt
  farzi-fast distill  --interactions my_log.csv --out runs/mine     # your own log
  farzi-fast export   runs/mine --format csv --top 100
  farzi-fast inspect  runs/mine --interactions my_log.csv

docs/cli.md describes every command and the run folder a distillation writes."""


class _DefaultsHelp(argparse.RawDescriptionHelpFormatter,
                    argparse.ArgumentDefaultsHelpFormatter):
    """Appends an option's default to its help where there is one to show: not None (unset:
    the preset's, which the help says in words) and not where the help gives it already."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _source(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """Where the data comes from: a named data set, a user's interaction log, or a text."""
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument("--dataset", choices=["ml-100k", "ptb"])
    source.add_argument("--interactions", default=None, metavar="FILE",
                        help="an interaction log: a table (CSV/TSV, Parquet, RecBole .inter), "
                             "one user a line, or one event a line (see --format)")
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
    parser.add_argument("--format", default=None, choices=["table", "sequences", "pairs"],
                        help="form of --interactions: a table with a header (CSV/TSV, Parquet, "
                             ".inter), one user a line (`user item item ...`) or one event a "
                             "line (`user item`), in time order (default: sniffed)")
    parser.add_argument("--sep", default=None, help="delimiter of a --interactions table "
                                                    "(default: sniffed; tab for .inter)")
    for role in ("user", "item", "time"):
        parser.add_argument(f"--{role}-col", default=None,
                            help=f"{role} column of --interactions (default: {role}, "
                                 f"{role}_id, ...)")
    parser.add_argument("--title-col", default=None,
                        help="column of --interactions naming the items (kept for export)")


def _student(parser: argparse.ArgumentParser) -> None:
    """The data, the student's architecture and sizes (unset: the preset's), device, seed."""
    _source(parser)
    parser.add_argument("--max-len", type=positive, default=None,
                        help="sequence length of students (default: the preset's)")
    parser.add_argument("--architecture", choices=ARCHITECTURES, default="transformer",
                        help="student: the task's causal Transformer (SASRec), a GRU4Rec or a "
                             "NextItNet-style CNN (--layers blocks)")
    recommend, text = preset("ml-100k", "cpu").student, preset("ptb", "cpu").student
    add_fields(parser, StudentSizes)
    for action in parser._actions:
        name = action.dest
        if name in ("dim", "heads", "layers", "dropout"):
            action.help = (f"{action.help} (default: the preset's; cpu: "
                           f"{getattr(recommend, name)}, for text {getattr(text, name)})")
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, cuda:N (auto: cuda when there is a GPU)")
    parser.add_argument("--seed", type=non_negative, default=0,
                        help=field_metadata("seed")["help"])


def _distill(sub: Subparsers, formatter: type[argparse.HelpFormatter]) -> None:
    d = sub.add_parser("distill", help="distill a data set into a FarziData summary",
                       formatter_class=formatter,
                       description="Distill a data set into a FarziData summary in --out. "
                                   "Every setting not given takes the preset's value.")
    # argparse takes "-3x4" for an option unless it looks like a negative number to it: let
    # it reach --size's own check, which names the problem.
    d._negative_number_matcher = re.compile(r"^-\d+(\.\d*)?$|^-\d+x\d+$")
    _student(d)
    d.add_argument("--preset", choices=NAMES, default="cpu",
                   help="cpu: 50x20, < 30 min on 2 cores; paper: the paper's sizes; explicit "
                        "options override it")
    d.add_argument("--out", required=True, help="the run folder")
    settings = d.add_argument_group("distillation settings (DistillConfig; default: the "
                                    "preset's)")
    add_fields(settings, DistillConfig, skip=("seed",))
    d.add_argument("--also-students", nargs="+", choices=ARCHITECTURES, default=[],
                   metavar="ARCH",
                   help="further architectures the inner loops take turns with, each with the "
                        "same sizes (validation averages them all)")
    d.add_argument("--validate-every", type=non_negative, default=None,
                   help="validate the summary every N outer steps and keep the best (0: off, "
                        "the last summary is kept; default: the preset's)")
    d.add_argument("--validation-users", type=positive, default=VALIDATION_USERS, metavar="N",
                   help="users a validation ranks: a fixed sample of a larger log (every "
                        "user of a smaller one)")
    d.add_argument("--train-steps", type=positive, default=600,
                   help="most steps of the students that validate the summary")
    d.add_argument("--train-lr", type=rate, default=1e-3)
    d.add_argument("--checkpoint-every", type=non_negative, default=10)
    d.add_argument("--skip-nonfinite", type=non_negative, default=RunOptions.skip_nonfinite,
                   metavar="N",
                   help="outer steps in a row whose meta-gradient may come out not finite (a "
                        "rare float32 rounding event) and be skipped, with a warning")
    d.add_argument("--timeout", type=positive, default=600,
                   help="seconds a process waits for the others under torchrun before it "
                        "stops with an error")
    d.add_argument("--resume", action="store_true",
                   help="continue the run in --out exactly where its last checkpoint left it")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(command="distill")


def _train(sub: Subparsers, formatter: type[argparse.HelpFormatter]) -> None:
    t = sub.add_parser("train", help="train a student on the full data, a random subset or a "
                                     "summary, save it and print its test metrics",
                       formatter_class=formatter)
    _student(t)
    t.add_argument("--on", choices=["full", "last", "random", "farzi"], default="full",
                   help="full: every training event (windows of --max-len + 1); last: each "
                        "user's last --max-len + 1 training events; random: --count of those "
                        "rows; farzi: a summary")
    t.add_argument("--farzi", default=None, help="a distill --out folder, or a farzi.pt")
    t.add_argument("--count", type=positive, default=50, help="rows of the random subset")
    t.add_argument("--steps", type=positive, default=1500,
                   help="most training steps; the checkpoint best on validation is kept")
    t.add_argument("--train-lr", type=rate, default=1e-3)
    t.add_argument("--out", required=True)
    t.set_defaults(command="train")


def _evaluate(sub: Subparsers, formatter: type[argparse.HelpFormatter]) -> None:
    e = sub.add_parser("evaluate", help="metrics of a saved student on valid and test",
                       formatter_class=formatter)
    _source(e)
    e.add_argument("--student", required=True)
    e.add_argument("--device", default="cpu")
    e.set_defaults(command="evaluate")


def _export(sub: Subparsers, formatter: type[argparse.HelpFormatter]) -> None:
    x = sub.add_parser("export", help="a summary's synthetic sequences in the data's own ids",
                       formatter_class=formatter)
    x.add_argument("run", help="a distill --out folder, or a farzi.pt")
    x.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    how = x.add_mutually_exclusive_group()
    how.add_argument("--greedy", action="store_true",
                     help="each position's most likely id (the default)")
    how.add_argument("--sample", type=positive, default=None, metavar="K",
                     help="K sampled versions of every sequence")
    how.add_argument("--top", type=positive, default=None, metavar="K",
                     help="each position's K most likely ids with their probabilities, one row "
                          "each: the summary's distributions, which is what teaches")
    x.add_argument("--seed", type=non_negative, default=0)
    x.add_argument("--out", default=None, help="file to write (default: standard output)")
    x.set_defaults(command="export", device="cpu")


def _inspect(sub: Subparsers, formatter: type[argparse.HelpFormatter]) -> None:
    i = sub.add_parser("inspect", help="a short human summary of a summary, and a PNG",
                       formatter_class=formatter)
    i.add_argument("run", help="a distill --out folder, or a farzi.pt")
    _source(i, required=False)  # optional: the data to check the vocabulary and compare with
    i.add_argument("--top", type=positive, default=5, help="items shown per sequence")
    i.add_argument("--sequences", type=positive, default=10, help="sequences shown")
    i.add_argument("--png", default=None, help="default: inspect.png beside the summary")
    i.set_defaults(command="inspect", device="cpu")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farzi-fast", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_distill, _train, _evaluate, _export, _inspect):
        add(sub, _DefaultsHelp)
    return parser
