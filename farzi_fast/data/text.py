"""A user's own text corpus as language-modelling data: word-level like Penn Treebank by
default (whitespace words, <eos> ending each line, the training split's vocabulary), or the
tokens of a Hugging Face `tokenizers` file the user has, or of a BPE tokenizer trained here on
the training text (`bpe_vocab`). Nothing is ever downloaded. Without validation or test files,
the last lines of the training file are held out for them (5% each)."""

from __future__ import annotations

from pathlib import Path

import torch

from .datasets import LanguageData, word_level

HELD_OUT = 0.05  # of the training lines, for each missing split


def _lines(path, role: str) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--{role} {path}: no such file")
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text (byte {error.start})") from None
    if not lines:
        raise ValueError(f"{path} is empty: expected text, one sentence or paragraph per line")
    return lines


def _splits(train, valid, test) -> dict[str, list[str]]:
    lines = {"train": _lines(train, "text")}
    missing = [s for s, f in (("valid", valid), ("test", test)) if f is None]
    held = max(1, int(len(lines["train"]) * HELD_OUT))
    if len(lines["train"]) <= held * len(missing):
        raise ValueError(f"{train} has {len(lines['train'])} lines: too few to hold out "
                         f"{', '.join(missing)} lines; give --valid/--test files")
    for split in reversed(missing):  # test takes the very last lines, valid those before
        lines[split], lines["train"] = lines["train"][-held:], lines["train"][:-held]
    for split, file in (("valid", valid), ("test", test)):
        if file is not None:
            lines[split] = _lines(file, split)
    return lines


def _tokenizer(tokenizer, bpe_vocab, train_lines):
    try:
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    except ImportError:
        raise ImportError("--tokenizer / --bpe-vocab need Hugging Face tokenizers: pip "
                          "install 'farzi_fast[data]'") from None
    if tokenizer is not None:
        path = Path(tokenizer)
        if not path.is_file():
            raise FileNotFoundError(f"--tokenizer {path}: no such file")
        try:
            return Tokenizer.from_file(str(path))
        except Exception as error:  # the Rust library raises a bare Exception on bad JSON
            raise ValueError(f"--tokenizer {path} is not a tokenizers JSON file "
                             f"({str(error).splitlines()[0][:120]})") from None
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(train_lines, trainers.BpeTrainer(
        vocab_size=bpe_vocab, special_tokens=["<unk>", "<eos>"], show_progress=False))
    return bpe


def load_text(train, valid=None, test=None, *, tokenizer=None,
              bpe_vocab: int | None = None) -> LanguageData:
    """Language-modelling data from text files (see the module docstring).

    Args:
        train: the training text, one sentence or paragraph a line.
        valid, test: their files (default: held-out lines of `train`).
        tokenizer: a Hugging Face `tokenizers` JSON file (default: words).
        bpe_vocab: train a BPE tokenizer of this many tokens on the training lines instead.

    Returns:
        LanguageData whose `vocab` names each token id.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: both `tokenizer` and `bpe_vocab`, or a text too short to split.
    """
    if tokenizer is not None and bpe_vocab is not None:
        raise ValueError("give --tokenizer or --bpe-vocab, not both")
    if bpe_vocab is not None and (isinstance(bpe_vocab, bool) or not isinstance(bpe_vocab, int)
                                  or bpe_vocab < 3):
        raise ValueError(f"--bpe-vocab must be a whole number >= 3, got {bpe_vocab!r}")
    lines = _splits(train, valid, test)
    if tokenizer is None and bpe_vocab is None:
        return word_level({split: [line.split() + ["<eos>"] for line in split_lines]
                           for split, split_lines in lines.items()})
    tok = _tokenizer(tokenizer, bpe_vocab, lines["train"])
    by_id = sorted(tok.get_vocab(with_added_tokens=True).items(), key=lambda pair: pair[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise ValueError(f"--tokenizer {tokenizer}: its ids are not 0..{len(by_id) - 1} "
                         f"without gaps, which the students' embeddings need")
    vocab = [token for token, _ in by_id]
    eos = tok.token_to_id("<eos>")
    unk = tok.token_to_id("<unk>")
    streams, unknown = {}, {}
    for split, split_lines in lines.items():
        ids = []
        for encoding in tok.encode_batch(split_lines):
            ids.extend(encoding.ids + ([eos] if eos is not None else []))
        streams[split] = torch.tensor(ids, dtype=torch.long)
        unknown[split] = sum(1 for i in ids if i == unk) if unk is not None else 0
    return LanguageData(vocab, streams["train"], streams["valid"], streams["test"], unknown)
