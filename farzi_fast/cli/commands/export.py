"""`farzi-fast export`: a summary's synthetic sequences as JSON lines or CSV, in the data's
own ids."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from ...distillation.reports import export_rows
from ...files import atomic_write_text
from ..sources import summary_of


def run(args) -> int:
    farzi, _ = summary_of(args.run)
    if not (args.greedy or args.sample or args.top):
        # the default stays one id per position (compact, for reading), but hard ids teach a
        # fraction of what the distributions do: say so to whoever did not choose
        print("export: writing each position's most likely id (--greedy, the default); hard "
              "ids teach far less than the summary's distributions, which --top K keeps "
              "(docs/results.md: 'The summary is soft data')", file=sys.stderr)
    rows = export_rows(farzi, None if args.greedy else args.sample, args.seed, args.top)
    if args.format == "jsonl":
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
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
