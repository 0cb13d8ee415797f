"""A user's own interaction log as sequential-recommendation data, in the field's three forms
(`FORMATS`, sniffed unless given):

- `table`: CSV/TSV with a header (delimiter sniffed, or given), Parquet, or a RecBole atomic
  `.inter` file, read with pandas / pyarrow (the `[data]` extra); each user's events ordered by
  the time column, ties kept in file order;
- `sequences`: one user a line, `user item item ...`, items in time order (the files of the
  SASRec / BERT4Rec / S3Rec / ICLRec repositories);
- `pairs`: one event a line, `user item`, in time order, no header.

Ids of any type become 1..V in their sorted order (0 is padding) and the mapping travels with
the data (`RecommendationData.vocabulary`), so a summary can be read back in the user's own ids.
Users with fewer than 3 events cannot be split leave-one-out and are dropped (counted). A bad
line is refused with the file, its line number and the form expected."""

from __future__ import annotations

from pathlib import Path

import torch

from .datasets import RecommendationData

# Column names tried, in order, when none is given.
DEFAULT_COLUMNS = {"user": ("user", "user_id", "userId", "userid"),
                   "item": ("item", "item_id", "itemId", "itemid", "movie_id", "movieId"),
                   "time": ("time", "timestamp", "ts", "datetime")}
MIN_EVENTS = 3  # one to train on, one to validate, one to test
FORMATS = ("table", "sequences", "pairs")
EXPECTED = {"sequences": "`user item item ...` (one user a line, items in time order)",
            "pairs": "`user item` (one event a line, in time order)"}


def _pandas():
    try:
        import pandas
    except ImportError:
        raise ImportError("reading interaction logs needs pandas (and pyarrow for Parquet): "
                          "pip install 'farzi_fast[data]'") from None
    return pandas


def read_table(path, sep: str | None = None):
    """The file as a DataFrame of strings/numbers. RecBole's typed header
    (`user_id:token item_id:token timestamp:float`) loses its `:type` suffixes."""
    pd = _pandas()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--interactions {path}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty: expected a table of interactions with a header row")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif path.suffix.lower() == ".inter":
            frame = pd.read_csv(path, sep=sep or "\t", dtype=str, keep_default_na=False)
            frame.columns = [str(c).split(":")[0] for c in frame.columns]
        else:
            # sep=None: pandas sniffs the delimiter (comma, tab, semicolon, ...)
            frame = pd.read_csv(path, sep=sep, engine="python" if sep is None else "c",
                                dtype=str, keep_default_na=False)
    except (ValueError, OSError) as error:  # pandas' ParserError, pyarrow's ArrowInvalid
        message = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise ValueError(f"{path}: cannot read it as a table ({message})") from None
    if frame.empty:
        raise ValueError(f"{path} has a header but no rows of interactions")
    return frame


def _column(frame, path, role: str, given: str | None) -> str:
    found = [str(c) for c in frame.columns]
    if given is not None:
        if given not in found:
            raise ValueError(f"{path}: no column {given!r} (--{role}-col); the columns are "
                             f"{found}")
        return given
    for name in DEFAULT_COLUMNS[role]:
        if name in found:
            return name
    raise ValueError(f"{path}: no {role} column: tried {list(DEFAULT_COLUMNS[role])}, found "
                     f"{found}; name it with --{role}-col")


def _sorted_ids(values) -> list:
    """Distinct ids in natural order: numerically when every id is a number, else as text."""
    distinct = list(dict.fromkeys(values))
    try:
        return sorted(distinct, key=lambda v: float(v))
    except (TypeError, ValueError):
        return sorted(distinct, key=str)


def sniff_format(path) -> str:
    """The form of the file at `path` (`FORMATS`): `table` for Parquet, `.inter`, a first
    line holding a comma or semicolon or naming a known column; else `pairs` when every one
    of the first lines holds two whitespace-separated fields, `sequences` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--interactions {path}: no such file")
    if path.suffix.lower() in (".parquet", ".pq", ".inter"):
        return "table"
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line for line in (f.readline() for _ in range(200)) if line.strip()]
    if not lines:
        raise ValueError(f"{path} is empty: expected interactions")
    first = lines[0]
    header = {name.split(":")[0].strip().strip('"') for name in
              first.replace(";", ",").replace("\t", ",").replace(" ", ",").split(",")}
    known = {name for names in DEFAULT_COLUMNS.values() for name in names}
    if "," in first or ";" in first or header & known:
        return "table"
    return "pairs" if all(len(line.split()) == 2 for line in lines) else "sequences"


def _read_lines(path, form: str) -> list[tuple[str, list[str]]]:
    """(user, items in time order) per user, users in the order they first appear, from a
    `sequences` or `pairs` file; a bad line is refused by number."""
    path = Path(path)
    users: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if (form == "pairs" and len(fields) != 2) or len(fields) < 2:
                raise ValueError(f"{path}:{number}: expected {EXPECTED[form]}, got "
                                 f"{line.strip()[:80]!r}")
            user, items = fields[0], fields[1:]
            if form == "sequences" and user in users:
                raise ValueError(f"{path}:{number}: user {user!r} has a line already (one "
                                 f"user a line in --format sequences; --format pairs reads one "
                                 f"event a line)")
            users.setdefault(user, []).extend(items)
    if not users:
        raise ValueError(f"{path} is empty: expected {EXPECTED[form]}")
    return list(users.items())


def load_interactions(path, *, format: str | None = None, sep: str | None = None,
                      user_col: str | None = None, item_col: str | None = None,
                      time_col: str | None = None,
                      title_col: str | None = None) -> RecommendationData:
    """Per-user sequences from an interaction log (see the module docstring).

    Args:
        path: the file.
        format: `table`, `sequences` or `pairs` (`FORMATS`); None: sniffed (`sniff_format`).
        sep, user_col, item_col, time_col, title_col: a table's delimiter and columns (found
            by name when not given); `title_col` names a column of item names to keep.

    Returns:
        RecommendationData with the data's own ids as `vocabulary`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a file, line or column not of the expected form, or no user with the
            3 events the leave-one-out split needs.
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {format!r}")
    form = format or sniff_format(path)
    if form != "table":
        given = [f"--{name}" for name, value in (("sep", sep), ("user-col", user_col),
                                                ("item-col", item_col), ("time-col", time_col),
                                                ("title-col", title_col)) if value is not None]
        if given:
            raise ValueError(f"{path}: {', '.join(given)} name a table's columns; this file is "
                             f"read as --format {form} ({EXPECTED[form]})")
        return _from_lines(path, _read_lines(path, form))
    pd = _pandas()
    frame = read_table(path, sep)
    user = _column(frame, path, "user", user_col)
    item = _column(frame, path, "item", item_col)
    time = _column(frame, path, "time", time_col)
    title = _column(frame, path, "title", title_col) if title_col else None
    times = pd.to_numeric(frame[time], errors="coerce")
    if times.isna().any():
        row = int(times.isna().to_numpy().nonzero()[0][0])
        raise ValueError(f"{path}: column {time!r} must hold numbers (e.g. unix seconds); row "
                         f"{row + 1} has {frame[time].iloc[row]!r}")
    users, items = frame[user].astype(str), frame[item].astype(str)
    vocabulary = ["<pad>"] + [str(v) for v in _sorted_ids(items)]
    item_index = {v: i for i, v in enumerate(vocabulary) if i}
    table = pd.DataFrame({"user": users, "item": items.map(item_index), "time": times,
                          "row": range(len(frame))})
    sequences, dropped = [], 0
    order = {u: i for i, u in enumerate(_sorted_ids(users))}
    table["user_order"] = table["user"].map(order)
    for _, events in table.sort_values(["user_order", "time", "row"]).groupby(
            "user_order", sort=True):
        if len(events) < MIN_EVENTS:
            dropped += 1
            continue
        sequences.append(torch.tensor(events["item"].to_numpy(), dtype=torch.long))
    if not sequences:
        raise ValueError(f"{path}: no user has the {MIN_EVENTS} interactions the leave-one-out "
                         f"split needs (one to train on, one to validate, one to test)")
    titles = None
    if title is not None:
        first = frame.assign(_item=items).drop_duplicates("_item").set_index("_item")[title]
        titles = [""] + [str(first[v]) for v in vocabulary[1:]]
    return RecommendationData(len(vocabulary) - 1, sequences, vocabulary=vocabulary,
                              titles=titles, dropped_users=dropped)


def _from_lines(path, users: list[tuple[str, list[str]]]) -> RecommendationData:
    """RecommendationData from (user, items in order) pairs, users kept in file order."""
    vocabulary = ["<pad>"] + [str(v) for v in _sorted_ids(i for _, items in users for i in items)]
    index = {v: i for i, v in enumerate(vocabulary) if i}
    sequences = [torch.tensor([index[i] for i in items], dtype=torch.long)
                 for _, items in users if len(items) >= MIN_EVENTS]
    if not sequences:
        raise ValueError(f"{path}: no user has the {MIN_EVENTS} interactions the leave-one-out "
                         f"split needs (one to train on, one to validate, one to test)")
    return RecommendationData(len(vocabulary) - 1, sequences, vocabulary=vocabulary,
                              dropped_users=len(users) - len(sequences))
