"""Farzi Data (Sachdeva et al., arXiv 2310.09983) on top of the engine: the summary, distill(),
students, data sets, metrics and the two tasks of the paper."""

from .distill import DistillConfig, distill
from .protocol import Recipe, fit, fit_and_test, popularity_summary
from .students import GRU4Rec, CausalTransformer, gru4rec, sasrec, transformer_lm
from .summary import FarziData
from .train import random_subset, train_student

__all__ = ["CausalTransformer", "DistillConfig", "FarziData", "GRU4Rec", "Recipe", "distill",
           "fit", "fit_and_test", "gru4rec", "popularity_summary", "random_subset", "sasrec",
           "train_student", "transformer_lm"]
