"""A user's own interaction log as sequential-recommendation data: CSV/TSV (delimiter sniffed,
or given), Parquet, or a RecBole atomic `.inter` file, read with pandas / pyarrow (the `[data]`
extra). Ids of any type become 1..V in their sorted order (0 is padding) and the mapping
travels with the data (`RecommendationData.vocabulary`), so a summary can be read back in the
user's own ids. Each user's events are ordered by time, ties kept in file order; users with
fewer than 3 events cannot be split leave-one-out and are dropped (counted)."""

from __future__ import annotations

from pathlib import Path

import torch

from .datasets import RecommendationData

# Column names tried, in order, when none is given.
DEFAULT_COLUMNS = {"user": ("user", "user_id", "userId", "userid"),
                   "item": ("item", "item_id", "itemId", "itemid", "movie_id", "movieId"),
                   "time": ("time", "timestamp", "ts", "datetime")}
MIN_EVENTS = 3  # one to train on, one to validate, one to test


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


def load_interactions(path, *, sep: str | None = None, user_col: str | None = None,
                      item_col: str | None = None, time_col: str | None = None,
                      title_col: str | None = None) -> RecommendationData:
    """Per-user sequences from an interaction log (see the module docstring). `title_col`
    names a column of item names to keep beside the ids."""
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
