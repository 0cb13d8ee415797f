"""Loaders of event-sequence data: the paper's two data sets (MovieLens-100K, Penn Treebank),
a user's interaction log and a user's text. They know nothing of training: each returns
`RecommendationData` or `LanguageData`. Nothing is ever downloaded."""

from .datasets import (
                       PADDING_ID,
                       LanguageData,
                       RecommendationData,
                       find_file,
                       left_pad,
                       load_movielens_100k,
                       load_ptb,
)
from .interactions import load_interactions
from .text import load_text

__all__ = ["PADDING_ID", "LanguageData", "RecommendationData", "find_file", "left_pad",
           "load_interactions", "load_movielens_100k", "load_ptb", "load_text"]
