"""`farzi-fast evaluate`: the valid and test metrics of a student `train` saved."""

from __future__ import annotations

import json

from ...files import safe_load
from ..sources import identity, load_source
from .train import STUDENT_FORMAT


def run(args) -> int:
    saved = safe_load(args.student, "student")
    expected = {"format": str, "dataset": str, "max_len": int, "student": dict, "state": dict}
    if saved.get("format") != STUDENT_FORMAT or not all(
            isinstance(saved.get(k), t) for k, t in expected.items()):
        raise ValueError(f"{args.student} is not a farzi-fast student file (expected the "
                         f"keys {sorted(expected)})")
    task = load_source(args, saved["max_len"])
    if saved["dataset"] != identity(task):
        raise ValueError(f"{args.student} was trained on {saved['dataset']}, not "
                         f"{identity(task)}")
    try:
        student = task.student(**saved["student"])
        student.load_state_dict(saved["state"])
    except (TypeError, RuntimeError) as error:
        raise ValueError(f"{args.student}: its student settings or weights do not fit "
                         f"({str(error).splitlines()[0][:160]})") from None
    print(json.dumps({split: task.evaluate(student.to(args.device), split)
                      for split in ("valid", "test")}))
    return 0
