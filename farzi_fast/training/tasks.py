"""The two tasks of the paper, each tying a data set to its student and its metric:
sequential recommendation on MovieLens-100K (SASRec, HR@10 / nDCG@10) and language modelling
on Penn Treebank (causal Transformer LM, perplexity)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .._checks import require_int
from ..data.datasets import (
    PADDING_ID,
    LanguageData,
    RecommendationData,
    load_movielens_100k,
    load_ptb,
)
from ..models import CausalCNN, GRU4Rec, gru4rec, nextitnet, sasrec, transformer_lm
from ..student_spec import ARCHITECTURES
from .metrics import evaluate_recommender, perplexity


@dataclass
class Task:
    name: str
    data: RecommendationData | LanguageData
    max_len: int
    metric: str            # the headline metric
    higher_is_better: bool

    @property
    def recommends(self) -> bool:
        """Sequential recommendation (SASRec-style students, ranking metrics) rather than
        language modelling."""
        return isinstance(self.data, RecommendationData)

    @property
    def vocab_size(self) -> int:
        """The students' vocabulary: the items and padding, or the text's tokens."""
        if isinstance(self.data, RecommendationData):
            return self.data.num_items + 1
        return self.data.vocab_size

    def student(self, dim: int = 50, heads: int = 1, layers: int = 2, dropout: float = 0.2,
                architecture: str = "transformer") -> nn.Module:
        """A fresh student: the task's causal Transformer (SASRec on ml-100k), with
        architecture="gru" a GRU4Rec-style recurrent one, with "cnn" a NextItNet-style
        convolutional one of `layers` blocks (`heads` unused by both)."""
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        if isinstance(self.data, RecommendationData):
            if architecture == "gru":
                return gru4rec(self.data.num_items, self.max_len, dim, layers, dropout)
            if architecture == "cnn":
                return nextitnet(self.data.num_items, self.max_len, dim, layers, dropout)
            return sasrec(self.data.num_items, self.max_len, dim, heads, layers, dropout)
        if architecture == "gru":
            return GRU4Rec(self.data.vocab_size, self.max_len, dim, layers, dropout)
        if architecture == "cnn":
            return CausalCNN(self.data.vocab_size, self.max_len, dim, layers, dropout=dropout)
        return transformer_lm(self.data.vocab_size, self.max_len, dim, heads, layers, dropout)

    @property
    def vocabulary(self) -> list[str] | None:
        """The data's own name for each id (item ids, words), when it has them."""
        data = self.data
        return data.vocabulary if isinstance(data, RecommendationData) else data.vocab

    @property
    def padding_id(self) -> int | None:
        """The id that pads short histories (PADDING_ID for interactions); text has none."""
        return PADDING_ID if self.recommends else None

    @property
    def titles(self) -> list[str] | None:
        return self.data.titles if isinstance(self.data, RecommendationData) else None

    def train_rows(self) -> torch.Tensor:
        """Real training sequences, rows of max_len + 1 ids: for recommendation each user's
        last max_len + 1 training items (what a distillation draws from), for text the
        whole training text in chunks."""
        if isinstance(self.data, RecommendationData):
            return self.data.train_batch(self.max_len)
        return self.data.chunks("train", self.max_len + 1)

    def sample_users(self, count: int, seed: int = 0) -> Task:
        """The task with its validation and test ranking over `count` users drawn once (all
        when there are no more); text is returned as it is."""
        if not isinstance(self.data, RecommendationData):
            return self
        return dataclasses.replace(self, data=self.data.sample_users(count, seed))

    def all_events(self) -> torch.Tensor:
        """Every training event as a target once, rows of max_len + 1 ids: the full data."""
        if isinstance(self.data, RecommendationData):
            return self.data.train_windows(self.max_len)
        return self.data.chunks("train", self.max_len + 1)

    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        if isinstance(self.data, RecommendationData):
            return evaluate_recommender(model, self.data, split, self.max_len)
        return {"perplexity": perplexity(model, self.data, split, self.max_len)}


def recommendation_task(data: RecommendationData, name: str, max_len: int) -> Task:
    """A sequential-recommendation task over any RecommendationData (e.g. a user's own log,
    farzi.interactions.load_interactions), with MovieLens' student and metrics."""
    require_int("max_len", max_len, 2, "the students' sequence length")
    return Task(name, data, max_len, "HR@10", True)


def language_task(data: LanguageData, name: str, max_len: int) -> Task:
    """A language-modelling task over any LanguageData (e.g. a user's own text,
    farzi.text.load_text), with Penn Treebank's student and perplexity."""
    require_int("max_len", max_len, 2, "the students' sequence length")
    return Task(name, data, max_len, "perplexity", False)


def load_task(name: str, path=None, max_len: int | None = None) -> Task:
    """The task `name` ('ml-100k' or 'ptb') with its data read from `path`; `max_len` is the
    students' sequence length (default 200 for ml-100k, 64 for ptb)."""
    if max_len is not None:
        require_int("max_len", max_len, 2, "the students' sequence length")
    if name == "ml-100k":
        return recommendation_task(load_movielens_100k(path), name, max_len or 200)
    if name == "ptb":
        return language_task(load_ptb(path), name, max_len or 64)
    raise ValueError(f"dataset must be 'ml-100k' or 'ptb', got {name!r}")
