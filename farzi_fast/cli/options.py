"""Argument types and the options derived from the configuration's fields: every setting of
`DistillConfig` and `StudentSizes` becomes `--name-with-dashes` with the field's own help,
unset (None) unless given, so that the chosen preset fills it. No torch import."""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable, Iterable
from typing import Any

from .._checks import require_positive

# an argparse parser or argument group
Parser = argparse.ArgumentParser | argparse._ArgumentGroup

_SIZE = re.compile(r"([1-9][0-9]*)x([1-9][0-9]*)", re.ASCII)


def size(text: str) -> tuple[int, int]:
    """An argparse type: μxξ, e.g. 50x150."""
    match = _SIZE.fullmatch(text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"expected sequences x length like 50x150 (plain "
                                         f"digits), got {text!r}")
    return int(match[1]), int(match[2])


def count(minimum: int) -> Callable[[str], int]:
    """An argparse type: a plain decimal integer >= minimum (no signs, underscores or
    non-ASCII digits, which int() would accept)."""
    def parse(text: str) -> int:
        if not re.fullmatch(r"[0-9]+", text.strip(), re.ASCII) or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got "
                                             f"{text!r}")
        return int(text)
    return parse


positive, non_negative = count(1), count(0)


def rate(text: str) -> float:
    """An argparse type: a finite number > 0 (a learning rate)."""
    try:  # float() and the library's own check of a rate refuse alike
        return require_positive("rate", float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}") from None


# an annotation of a config field -> the argparse type that reads it
_TYPES: dict[str, Any] = {"int": non_negative, "int | None": non_negative, "float": float,
          "tuple[int, int]": size, "str": str}


def option(name: str) -> str:
    """The command line's spelling of setting `name`."""
    return "--" + name.replace("_", "-")


def add_fields(parser: Parser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One option per field of the dataclass `cls` (but `skip`), default None: unset."""
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        meta = field.metadata
        if field.type == "bool":
            parser.add_argument(option(field.name), action="store_const", const=True,
                                default=None, help=meta.get("help"))
            continue
        kind = "tuple[int, int]" if field.name == "size" else str(field.type)
        parser.add_argument(option(field.name), type=_TYPES[kind], default=None,
                            choices=meta.get("choices"),
                            metavar="MUxXI" if field.name == "size" else None,
                            help=meta.get("help"))


def given(args: argparse.Namespace, cls: type, skip: tuple[str, ...] = ()) -> dict:
    """The fields of `cls` set on the command line, name -> value."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if f.name not in skip and getattr(args, f.name, None) is not None}


def as_options(error: ValueError, names: Iterable[str]) -> ValueError:
    """`error` with the settings in `names` spelled as the command line's options."""
    message = str(error)
    for name in names:
        message = re.sub(rf"\b{name}\b", option(name), message)
    return ValueError(message)
