"""Writing benchmark results: JSON (everything), CSV (the rows) and a markdown table that
names the device, so a committed number always says where it came from."""

from __future__ import annotations

import csv
import datetime as _dt
import json
from pathlib import Path

_SUFFIX = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """'4M' -> 4 * 2**20 parameters; plain integers pass through."""
    text = text.strip().upper()
    if text and text[-1] in _SUFFIX:
        return int(float(text[:-1]) * _SUFFIX[text[-1]])
    return int(text)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, int) and value >= 1 << 20 and value % (1 << 20) == 0:
        return f"{value >> 20}M"
    return str(value)


def markdown_table(rows, columns) -> str:
    lines = ["| " + " | ".join(title for _, title in columns) + " |",
             "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key, "")) for key, _ in columns) + " |")
    return "\n".join(lines)


def write_report(result: dict, columns, name: str, out_dir=None, note: str = "") -> str:
    """Return the markdown report; with `out_dir`, also write NAME.json/.csv/.md there."""
    result.setdefault("date", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    header = f"**{name}** on {result['device']} (torch {result['torch']}, {result['date']})"
    text = "\n\n".join(part for part in (header, note, markdown_table(result["rows"], columns))
                       if part) + "\n"
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        with open(out / f"{name}.csv", "w", newline="") as f:
            fields = list(dict.fromkeys(k for row in result["rows"] for k in row))  # all, in order
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(result["rows"])
        (out / f"{name}.md").write_text(text)
    return text
