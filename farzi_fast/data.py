"""Data sets for Farzi: `farzi_fast.data` is the public name of :mod:`farzi_fast.farzi.data`."""

from .farzi.data import (LanguageData, RecommendationData, find_file, left_pad, load_movielens_100k,
                         load_ptb)

__all__ = ["LanguageData", "RecommendationData", "find_file", "left_pad", "load_movielens_100k",
           "load_ptb"]
