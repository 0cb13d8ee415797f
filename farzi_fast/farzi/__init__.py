"""Farzi Data (Sachdeva et al., arXiv 2310.09983) on top of the engine: the summary, distill(),
students, data sets, metrics and the two tasks of the paper."""

from .distill import DistillConfig, distill
from .students import CausalTransformer, sasrec, transformer_lm
from .summary import FarziData
from .train import random_subset, train_student

__all__ = ["CausalTransformer", "DistillConfig", "FarziData", "distill", "random_subset",
           "sasrec", "train_student", "transformer_lm"]
