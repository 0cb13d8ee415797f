"""Farzi Data (Sachdeva et al., arXiv 2310.09983) on top of the engine: the summary, distill(),
students, data sets (the paper's two, a user's interaction log or text), metrics and tasks."""

from .distill import DistillConfig, distill
from .interactions import load_interactions
from .protocol import Recipe, fit, fit_and_test, popularity_summary
from .students import GRU4Rec, CausalTransformer, gru4rec, sasrec, transformer_lm
from .summary import FarziData
from .tasks import language_task, load_task, recommendation_task
from .text import load_text
from .train import random_subset, train_student

__all__ = ["CausalTransformer", "DistillConfig", "FarziData", "GRU4Rec", "Recipe", "distill",
           "fit", "fit_and_test", "gru4rec", "language_task", "load_interactions", "load_task",
           "load_text", "popularity_summary", "random_subset", "recommendation_task", "sasrec",
           "train_student", "transformer_lm"]
